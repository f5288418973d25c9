// CPU host test of libpolynl_trt_plugin.so, built against real TensorRT headers. The library is
// loaded the way IPluginRegistry::loadLibrary and trtexec --dynamicPlugins load it (dlopen, then the
// extern "C" getCreators / setLoggerFinder), and every plugin method that needs no GPU is checked
// against the op contract and the functional core. With --enqueue, the library is the plugin built over
// the CPU-emulated kernels (polynl_trt_plugin_emulated) and enqueue runs on host buffers too.
//
//   test_polynl_trt_plugin <path/to/libpolynl_trt_plugin.so> [--enqueue]
#include "check.h"
#include "enqueue_check.h"
#include <NvInferRuntime.h>

#include "polynl_contract.h"
#include "polynl_core.h"

#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

using namespace nvinfer1;
namespace contract = polynl::contract;
namespace core = polynl::core;

namespace
{

using polynl::testing::checks;
using polynl::testing::failures;

bool same(char const* a, char const* b)
{
    return a != nullptr && b != nullptr && std::strcmp(a, b) == 0;
}

bool contains(std::string const& text, char const* part)
{
    return text.find(part) != std::string::npos;
}

//! Collects the plugin's error messages (the plugin reports through setLoggerFinder's logger).
class CapturingLogger final : public ILogger
{
public:
    void log(Severity severity, AsciiChar const* message) noexcept override
    {
        if (severity <= Severity::kERROR)
        {
            mErrors += std::string(message) + "\n";
        }
    }

    //! Errors logged since the last call.
    std::string take()
    {
        std::string errors;
        errors.swap(mErrors);
        return errors;
    }

private:
    std::string mErrors;
};

class LoggerFinder final : public ILoggerFinder
{
public:
    explicit LoggerFinder(ILogger* logger)
        : mLogger(logger)
    {
    }
    ~LoggerFinder() override = default;

    ILogger* findLogger() override
    {
        return mLogger;
    }

private:
    ILogger* mLogger;
};

CapturingLogger logger;

//! TensorRT's IDimensionExpr wraps an apiv::VDimensionExpr; these doubles give it a constant.
class ConstantValue final : public apiv::VDimensionExpr
{
public:
    explicit ConstantValue(int64_t value)
        : mValue(value)
    {
    }
    bool isConstant() const override
    {
        return true;
    }
    int64_t getConstantValue() const override
    {
        return mValue;
    }
    bool isSizeTensor() const override
    {
        return false;
    }

private:
    int64_t mValue;
};

class ConstantExpr final : public IDimensionExpr
{
public:
    explicit ConstantExpr(int64_t value)
        : mValue(value)
    {
        mImpl = &mValue;
    }
    ~ConstantExpr() noexcept override = default;

private:
    ConstantValue mValue;
};

//! Builds constants only: PolyNL's output shape is the shape of X, with no arithmetic.
class ConstantBuilder final : public apiv::VExprBuilder
{
public:
    IDimensionExpr const* constant(int64_t value) override
    {
        mExprs.push_back(std::make_unique<ConstantExpr>(value));
        return mExprs.back().get();
    }
    IDimensionExpr const* operation(DimensionOperation, IDimensionExpr const&, IDimensionExpr const&) override
    {
        return nullptr;
    }
    IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override
    {
        return nullptr;
    }

private:
    std::vector<std::unique_ptr<ConstantExpr>> mExprs;
};

class ExprBuilder final : public IExprBuilder
{
public:
    ExprBuilder()
    {
        mImpl = &mBuilder;
    }
    ~ExprBuilder() noexcept override = default;

private:
    ConstantBuilder mBuilder;
};

Dims dims(std::vector<int64_t> const& extents)
{
    Dims d{};
    d.nbDims = static_cast<int32_t>(extents.size());
    for (size_t i = 0; i < extents.size(); ++i)
    {
        d.d[i] = extents[i];
    }
    return d;
}

//! X and the eight weights, in contract order, for channels c and inner width r.
std::vector<Dims> blockShapes(std::vector<int64_t> const& x, int64_t c, int64_t r)
{
    return {dims(x), dims({c, r}), dims({r}), dims({c, r}), dims({r}), dims({c, r}), dims({r}), dims({r, c}),
        dims({c})};
}

//! Build-time descriptors: desc.dims as given (may hold -1), min/opt/max = `concrete`, plus Y.
std::vector<DynamicPluginTensorDesc> dynamicIO(
    std::vector<Dims> const& shapes, std::vector<Dims> const& concrete, DataType xType, DataType weightType)
{
    std::vector<DynamicPluginTensorDesc> io(shapes.size() + 1);
    for (size_t i = 0; i < io.size(); ++i)
    {
        size_t const source = i < shapes.size() ? i : 0; // Y is shaped like X
        io[i].desc.dims = shapes[source];
        io[i].desc.type = i == 0 || i == shapes.size() ? xType : weightType;
        io[i].desc.format = TensorFormat::kLINEAR;
        io[i].desc.scale = -1.0F;
        io[i].min = concrete[source];
        io[i].opt = concrete[source];
        io[i].max = concrete[source];
    }
    return io;
}

std::optional<core::DataType> coreTypeOf(DataType type)
{
    switch (type)
    {
    case DataType::kFLOAT: return core::DataType::kFloat32;
    case DataType::kHALF: return core::DataType::kFloat16;
    case DataType::kBF16: return core::DataType::kBFloat16;
    default: return std::nullopt;
    }
}

//! The two plugin-library entry points, looked up by name as TensorRT does.
struct PluginLibrary
{
    void* handle = nullptr;
    IPluginCreatorInterface* const* (*getCreators)(int32_t&) = nullptr;
    void (*setLoggerFinder)(ILoggerFinder*) = nullptr;
};

PluginLibrary library;
IPluginCreatorV3One* creator = nullptr;

struct Plugin
{
    std::unique_ptr<IPluginV3> object;
    IPluginV3OneCore* core = nullptr;
    IPluginV3OneBuild* build = nullptr;
    IPluginV3OneRuntime* runtime = nullptr;
};

Plugin wrap(IPluginV3* object)
{
    Plugin plugin;
    plugin.object.reset(object);
    if (object != nullptr)
    {
        plugin.core = static_cast<IPluginV3OneCore*>(object->getCapabilityInterface(PluginCapabilityType::kCORE));
        plugin.build = static_cast<IPluginV3OneBuild*>(object->getCapabilityInterface(PluginCapabilityType::kBUILD));
        plugin.runtime
            = static_cast<IPluginV3OneRuntime*>(object->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    }
    return plugin;
}

Plugin create(std::vector<PluginField> const& fields, TensorRTPhase phase = TensorRTPhase::kBUILD)
{
    PluginFieldCollection const fc{static_cast<int32_t>(fields.size()), fields.data()};
    return wrap(creator->createPlugin("block", &fc, phase));
}

Plugin create(float alpha, char const* layout)
{
    return create({PluginField(contract::kAttrAlpha, &alpha, PluginFieldType::kFLOAT32, 1),
        PluginField(contract::kAttrLayout, layout, PluginFieldType::kCHAR, static_cast<int32_t>(std::strlen(layout)))});
}

//! load() found getCreators and setLoggerFinder; nothing else is exported, so the kernels' C ABI
//! inside the plugin cannot interpose with (or be interposed by) libpolynl_kernels.so.
void testLibraryExports()
{
    CHECK(dlsym(library.handle, "polynl_forward") == nullptr);
    CHECK(dlsym(library.handle, "polynl_workspace_size") == nullptr);
}

void testCreatorContract()
{
    int32_t count = -1;
    IPluginCreatorInterface* const* creators = library.getCreators(count);
    CHECK(count == 1 && creators != nullptr && creators[0] == creator);
    InterfaceInfo const info = creator->getInterfaceInfo();
    CHECK(same(info.kind, "PLUGIN CREATOR_V3ONE") && info.major == 1);
    CHECK(same(creator->getPluginName(), contract::kPluginName));
    CHECK(same(creator->getPluginVersion(), contract::kPluginVersion));
    CHECK(same(creator->getPluginNamespace(), contract::kPluginNamespace));

    PluginFieldCollection const* fields = creator->getFieldNames();
    CHECK(fields != nullptr && fields->nbFields == contract::kNumAttributes);
    for (int32_t i = 0; fields != nullptr && i < fields->nbFields && i < contract::kNumAttributes; ++i)
    {
        contract::AttributeSpec const& spec = contract::kAttributes[i];
        bool const isFloat = spec.kind == contract::FieldKind::kFloat32;
        CHECK(same(fields->fields[i].name, spec.name));
        CHECK(fields->fields[i].type == (isFloat ? PluginFieldType::kFLOAT32 : PluginFieldType::kCHAR));
        CHECK(!isFloat || fields->fields[i].length == 1);
    }
}

void testCreateAndCapabilities()
{
    float const alpha = 0.5F;
    char const tokens[] = {'t', 'o', 'k', 'e', 'n', 's'}; // ONNX strings need not be NUL-terminated
    Plugin plugin = create({PluginField(contract::kAttrAlpha, &alpha, PluginFieldType::kFLOAT32, 1),
        PluginField(contract::kAttrLayout, tokens, PluginFieldType::kCHAR, 6),
        PluginField(contract::kAttrPluginNamespace, "polynl", PluginFieldType::kCHAR, 6),
        PluginField(contract::kAttrPluginVersion, "1", PluginFieldType::kCHAR, 1)});
    CHECK(plugin.object && plugin.core && plugin.build && plugin.runtime);
    if (!plugin.object || !plugin.core || !plugin.build || !plugin.runtime)
    {
        return;
    }
    CHECK(same(plugin.object->getInterfaceInfo().kind, "PLUGIN"));
    CHECK(same(plugin.core->getInterfaceInfo().kind, "PLUGIN_V3ONE_CORE"));
    CHECK(same(plugin.build->getInterfaceInfo().kind, "PLUGIN_V3ONE_BUILD"));
    CHECK(plugin.build->getInterfaceInfo().major == 1);
    CHECK(same(plugin.runtime->getInterfaceInfo().kind, "PLUGIN_V3ONE_RUNTIME"));
    CHECK(plugin.object->getCapabilityInterface(static_cast<PluginCapabilityType>(7)) == nullptr);
    CHECK(same(plugin.core->getPluginName(), contract::kPluginName));
    CHECK(same(plugin.core->getPluginVersion(), contract::kPluginVersion));
    CHECK(same(plugin.core->getPluginNamespace(), contract::kPluginNamespace));
    std::string const metadata = plugin.build->getMetadataString();
    CHECK(contains(metadata, "alpha=0.5") && contains(metadata, "layout=tokens"));

    // Build phase: omitted attributes take the contract defaults; float64 alpha is accepted.
    PluginFieldCollection const empty{0, nullptr};
    for (PluginFieldCollection const* fc : {&empty, static_cast<PluginFieldCollection const*>(nullptr)})
    {
        Plugin defaults = wrap(creator->createPlugin("block", fc, TensorRTPhase::kBUILD));
        CHECK(defaults.build != nullptr && contains(defaults.build->getMetadataString(), "alpha=1.0"));
        CHECK(defaults.build != nullptr && contains(defaults.build->getMetadataString(), "layout=maps"));
    }
    double const wide = -2.25;
    Plugin fromDouble = create({PluginField(contract::kAttrAlpha, &wide, PluginFieldType::kFLOAT64, 1)});
    CHECK(fromDouble.build != nullptr && contains(fromDouble.build->getMetadataString(), "alpha=-2.25"));
    CHECK(logger.take().empty());
}

void testCreateRejectsBadFields()
{
    float const half = 0.5F;
    float const pair[] = {0.5F, 0.5F};
    int32_t const integer = 1;
    float const nan = std::numeric_limits<float>::quiet_NaN();
    float const inf = std::numeric_limits<float>::infinity();
    double const tooLarge = 1e300;
    struct Case
    {
        char const* what;
        std::vector<PluginField> fields;
        TensorRTPhase phase;
        char const* message;
    };
    std::vector<Case> const cases = {
        {"int32 alpha", {PluginField("alpha", &integer, PluginFieldType::kINT32, 1)}, TensorRTPhase::kBUILD, "alpha"},
        {"two alphas", {PluginField("alpha", pair, PluginFieldType::kFLOAT32, 2)}, TensorRTPhase::kBUILD, "alpha"},
        {"alpha without data", {PluginField("alpha", nullptr, PluginFieldType::kFLOAT32, 1)}, TensorRTPhase::kBUILD,
            "alpha"},
        {"NaN alpha", {PluginField("alpha", &nan, PluginFieldType::kFLOAT32, 1)}, TensorRTPhase::kBUILD, "alpha"},
        {"infinite alpha", {PluginField("alpha", &inf, PluginFieldType::kFLOAT32, 1)}, TensorRTPhase::kBUILD, "alpha"},
        {"alpha beyond float", {PluginField("alpha", &tooLarge, PluginFieldType::kFLOAT64, 1)}, TensorRTPhase::kBUILD,
            "alpha"},
        {"float layout", {PluginField("layout", &half, PluginFieldType::kFLOAT32, 1)}, TensorRTPhase::kBUILD,
            "layout"},
        {"negative layout length", {PluginField("layout", "maps", PluginFieldType::kCHAR, -1)}, TensorRTPhase::kBUILD,
            "layout"},
        {"layout without data", {PluginField("layout", nullptr, PluginFieldType::kCHAR, 4)}, TensorRTPhase::kBUILD,
            "layout"},
        {"unknown layout", {PluginField("layout", "nchw", PluginFieldType::kCHAR, 4)}, TensorRTPhase::kBUILD, "'nchw'"},
        {"empty layout", {PluginField("layout", "", PluginFieldType::kCHAR, 0)}, TensorRTPhase::kBUILD, "layout"},
        {"serialized without layout", {PluginField("alpha", &half, PluginFieldType::kFLOAT32, 1)},
            TensorRTPhase::kRUNTIME, "serialized"},
    };
    for (Case const& c : cases)
    {
        Plugin plugin = create(c.fields, c.phase);
        std::string const errors = logger.take();
        CHECK(plugin.object == nullptr);
        CHECK(contains(errors, c.message));
        if (plugin.object != nullptr || !contains(errors, c.message))
        {
            std::fprintf(stderr, "  case '%s' logged: %s\n", c.what, errors.c_str());
        }
    }
}

void testSerializationRoundTrip()
{
    // Values that a decimal round trip would change.
    for (auto const& [alpha, layout] : {std::pair{0.1F, "tokens"}, std::pair{-2.5e-7F, "maps"}})
    {
        Plugin original = create(alpha, layout);
        CHECK(original.runtime != nullptr);
        if (original.runtime == nullptr)
        {
            continue;
        }
        PluginFieldCollection const* serialized = original.runtime->getFieldsToSerialize();
        CHECK(serialized != nullptr && serialized->nbFields == 2);
        if (serialized == nullptr || serialized->nbFields != 2)
        {
            continue;
        }
        PluginField const& alphaField = serialized->fields[0];
        PluginField const& layoutField = serialized->fields[1];
        CHECK(same(alphaField.name, contract::kAttrAlpha) && alphaField.type == PluginFieldType::kFLOAT32);
        CHECK(alphaField.length == 1 && *static_cast<float const*>(alphaField.data) == alpha);
        CHECK(same(layoutField.name, contract::kAttrLayout) && layoutField.type == PluginFieldType::kCHAR);
        CHECK(std::string(static_cast<char const*>(layoutField.data), static_cast<size_t>(layoutField.length))
            == layout);

        // What TensorRT does when it deserializes an engine: the restored plugin serializes the same.
        Plugin restored = wrap(creator->createPlugin("block", serialized, TensorRTPhase::kRUNTIME));
        CHECK(restored.runtime != nullptr);
        PluginFieldCollection const* again = restored.runtime ? restored.runtime->getFieldsToSerialize() : nullptr;
        CHECK(again != nullptr && again->nbFields == 2);
        if (again != nullptr && again->nbFields == 2)
        {
            CHECK(*static_cast<float const*>(again->fields[0].data) == alpha);
            CHECK(again->fields[1].length == layoutField.length
                && std::memcmp(again->fields[1].data, layoutField.data, static_cast<size_t>(layoutField.length)) == 0);
        }
    }
    CHECK(logger.take().empty());
}

void testCloneAndAttach()
{
    Plugin original = create(0.75F, "tokens");
    CHECK(original.object != nullptr);
    if (original.object == nullptr)
    {
        return;
    }
    std::string const metadata = original.build->getMetadataString();
    Plugin clone = wrap(original.object->clone());
    Plugin attached = wrap(original.runtime->attachToContext(nullptr));
    original.object.reset(); // clones own their state
    for (Plugin const* copy : {&clone, &attached})
    {
        CHECK(copy->object != nullptr && copy->build != nullptr && copy->runtime != nullptr);
        CHECK(copy->build != nullptr && metadata == copy->build->getMetadataString());
    }
}

void testOutputsAndTypes()
{
    Plugin plugin = create(1.0F, "tokens");
    CHECK(plugin.build->getNbOutputs() == contract::kNumOutputs);
    for (DataType x : {DataType::kFLOAT, DataType::kHALF, DataType::kBF16})
    {
        std::vector<DataType> inputs(contract::kNumInputs, DataType::kFLOAT);
        inputs[contract::kInputX] = x;
        DataType output = DataType::kINT8;
        CHECK(plugin.build->getOutputDataTypes(&output, 1, inputs.data(), contract::kNumInputs) == 0);
        CHECK(output == x);
    }
    DataType output{};
    std::vector<DataType> const eight(8, DataType::kFLOAT);
    CHECK(plugin.build->getOutputDataTypes(&output, 1, eight.data(), 8) != 0);
    CHECK(contains(logger.take(), "9 inputs"));
}

//! Every type and format at every position, with earlier positions fixed to supported values as
//! TensorRT does; the answer must follow core::isSupportedType and "Y like X, weights like Wq".
void testFormatCombinations()
{
    Plugin plugin = create(1.0F, "tokens");
    std::vector<Dims> const shapes = blockShapes({2, 5, 12}, 12, 6);
    int32_t const nbTypes = EnumMax<DataType>();
    int32_t const nbFormats = EnumMax<TensorFormat>();
    int32_t const y = contract::kNumInputs;
    int32_t mismatches = 0;
    for (DataType x : {DataType::kFLOAT, DataType::kHALF, DataType::kBF16})
    {
        for (DataType w : {DataType::kFLOAT, DataType::kHALF, DataType::kBF16})
        {
            std::vector<DynamicPluginTensorDesc> io = dynamicIO(shapes, shapes, x, w);
            bool const weightsOk = core::isSupportedType(*coreTypeOf(x), *coreTypeOf(w));
            for (int32_t pos = 0; pos <= y && (pos <= contract::kInputWq || weightsOk); ++pos)
            {
                PluginTensorDesc const saved = io[pos].desc;
                for (int32_t t = 0; t < nbTypes; ++t)
                {
                    for (int32_t f = 0; f < nbFormats; ++f)
                    {
                        auto const type = static_cast<DataType>(t);
                        io[pos].desc.type = type;
                        io[pos].desc.format = static_cast<TensorFormat>(f);
                        std::optional<core::DataType> const coreType = coreTypeOf(type);
                        bool expected = f == static_cast<int32_t>(TensorFormat::kLINEAR) && coreType.has_value();
                        if (pos == contract::kInputX)
                        {
                            expected = expected && core::isSupportedType(*coreType, *coreType);
                        }
                        else if (pos == contract::kInputWq)
                        {
                            expected = expected && core::isSupportedType(*coreTypeOf(x), *coreType);
                        }
                        else
                        {
                            expected = expected && type == (pos == y ? x : w);
                        }
                        mismatches += plugin.build->supportsFormatCombination(pos, io.data(), y, 1) != expected;
                    }
                }
                io[pos].desc = saved;
            }
        }
    }
    CHECK(mismatches == 0);
    std::vector<DynamicPluginTensorDesc> io = dynamicIO(shapes, shapes, DataType::kFLOAT, DataType::kFLOAT);
    CHECK(!plugin.build->supportsFormatCombination(0, io.data(), y - 1, 1)); // wrong input count
    CHECK(!plugin.build->supportsFormatCombination(y + 1, io.data(), y, 1)); // no such position
}

void testWorkspaceSize()
{
    struct Case
    {
        bool maps;
        std::vector<int64_t> xMin, xMax;
        int64_t channels, inner;
    };
    // Folded (C' > C/4, many positions) and unfolded (C' <= C/4), in both layouts; profiles whose
    // positions span the N below which AUTO takes the unfolded path (C' = C/2: N < 2C).
    for (Case const& c : {Case{false, {4, 100, 12}, {4, 100, 12}, 12, 6},
             Case{true, {3, 16, 5, 7}, {3, 16, 5, 7}, 16, 4},
             Case{true, {2, 8, 4, 4}, {2, 8, 4, 4}, 8, 8}, Case{false, {5, 33, 64}, {5, 33, 64}, 64, 2},
             Case{false, {1, 16, 64}, {4, 1000, 64}, 64, 32}, Case{true, {1, 64, 2, 3}, {2, 64, 12, 12}, 64, 32},
             Case{false, {1, 1, 64}, {4, 100, 64}, 64, 32}})
    {
        for (DataType xType : {DataType::kHALF, DataType::kFLOAT})
        {
            Plugin plugin = create(1.0F, c.maps ? "maps" : "tokens");
            std::vector<int64_t> dynamicX(c.xMax.size(), -1);
            dynamicX[c.maps ? 1 : 2] = c.channels;
            std::vector<DynamicPluginTensorDesc> io = dynamicIO(blockShapes(dynamicX, c.channels, c.inner),
                blockShapes(c.xMax, c.channels, c.inner), xType, DataType::kFLOAT);
            io.front().min = io.back().min = dims(c.xMin);
            size_t const bytes = plugin.build->getWorkspaceSize(io.data(), contract::kNumInputs, &io.back(), 1);

            // Every N of the profile at its largest batch, each on the path the kernels take for it.
            core::Problem problem;
            std::vector<core::Shape> maxShapes;
            for (int32_t i = 0; i < contract::kNumInputs; ++i)
            {
                maxShapes.emplace_back(io[i].max.d, io[i].max.d + io[i].max.nbDims);
            }
            core::Layout const layout = c.maps ? core::Layout::kMaps : core::Layout::kTokens;
            CHECK(core::validateShapes(maxShapes, layout, &problem).empty());
            problem.xType = *coreTypeOf(xType); // X's type sizes the split copy of M (folded path)
            int64_t const fewest = c.maps ? c.xMin[2] * c.xMin[3] : c.xMin[1];
            int64_t const most = problem.positions;
            size_t needed = 0;
            for (int64_t n = fewest; n <= most; ++n)
            {
                problem.positions = n;
                core::Path const path = core::choosePath(c.channels, c.inner, n);
                needed = std::max(needed, core::workspaceLayout(problem, path).total);
            }
            CHECK(bytes >= needed && bytes - needed <= 256); // at most the slack to align to 256 bytes
        }
    }
    CHECK(logger.take().empty());

    // A maximum shape with unknown extents cannot be sized: 0 and a message, never a huge size.
    Plugin plugin = create(1.0F, "tokens");
    std::vector<Dims> const dynamic = blockShapes({-1, -1, 12}, 12, 6);
    std::vector<DynamicPluginTensorDesc> const io = dynamicIO(dynamic, dynamic, DataType::kFLOAT, DataType::kFLOAT);
    CHECK(plugin.build->getWorkspaceSize(io.data(), contract::kNumInputs, &io.back(), 1) == 0);
    CHECK(contains(logger.take(), "batch >= 0"));
}

void testShapeErrors()
{
    Plugin plugin = create(1.0F, "tokens");
    std::vector<Dims> const good = blockShapes({-1, -1, 12}, 12, 6);
    std::vector<Dims> const concrete = blockShapes({2, 9, 12}, 12, 6);
    std::vector<DynamicPluginTensorDesc> io = dynamicIO(good, concrete, DataType::kFLOAT, DataType::kFLOAT);
    CHECK(plugin.build->configurePlugin(io.data(), contract::kNumInputs, &io.back(), 1) == 0);
    CHECK(logger.take().empty());

    struct Case
    {
        int32_t input;
        Dims shape;
        char const* named;
    };
    for (Case const& c : {Case{contract::kInputX, dims({2, 12, 3, 3}), "input X"},
             Case{contract::kInputWq, dims({12}), "input Wq"}, Case{contract::kInputBq, dims({5}), "input bq"},
             Case{contract::kInputWk, dims({12, 5}), "input Wk"}, Case{contract::kInputWo, dims({12, 6}), "input Wo"},
             Case{contract::kInputBo, dims({6}), "input bo"}})
    {
        std::vector<DynamicPluginTensorDesc> bad = io;
        bad[c.input].desc.dims = c.shape;
        CHECK(plugin.build->configurePlugin(bad.data(), contract::kNumInputs, &bad.back(), 1) != 0);
        CHECK(contains(logger.take(), c.named));

        // The same shape at run time, through onShapeChange.
        std::vector<PluginTensorDesc> runtimeIO;
        for (DynamicPluginTensorDesc const& d : io)
        {
            runtimeIO.push_back(d.desc);
            runtimeIO.back().dims = d.max;
        }
        CHECK(plugin.runtime->onShapeChange(runtimeIO.data(), contract::kNumInputs, &runtimeIO.back(), 1) == 0);
        runtimeIO[c.input].dims = c.shape;
        CHECK(plugin.runtime->onShapeChange(runtimeIO.data(), contract::kNumInputs, &runtimeIO.back(), 1) != 0);
        CHECK(contains(logger.take(), c.named));
    }
    CHECK(plugin.build->configurePlugin(io.data(), contract::kNumInputs - 1, &io.back(), 1) != 0);
    CHECK(contains(logger.take(), "9 inputs"));
}

void testOutputShapes()
{
    Plugin plugin = create(1.0F, "tokens");
    ExprBuilder builder;
    std::vector<DimsExprs> inputs;
    for (Dims const& shape : blockShapes({3, 7, 10}, 10, 2)) // tokens: (B, N, C), C' = 2
    {
        DimsExprs exprs{};
        exprs.nbDims = shape.nbDims;
        for (int32_t i = 0; i < shape.nbDims; ++i)
        {
            exprs.d[i] = builder.constant(shape.d[i]);
        }
        inputs.push_back(exprs);
    }
    DimsExprs output{};
    CHECK(plugin.build->getOutputShapes(inputs.data(), contract::kNumInputs, nullptr, 0, &output, 1, builder) == 0);
    CHECK(output.nbDims == 3);
    int64_t const x[] = {3, 7, 10};
    for (int32_t i = 0; i < output.nbDims && i < 3; ++i)
    {
        CHECK(output.d[i] == inputs[0].d[i] && output.d[i]->isConstant());
        CHECK(output.d[i]->getConstantValue() == x[i]);
    }
    CHECK(plugin.build->getOutputShapes(inputs.data(), 8, nullptr, 0, &output, 1, builder) != 0);
    CHECK(contains(logger.take(), "9 inputs"));
}

void testEnqueueOnEmulatedKernels()
{
    for (polynl::testing::EnqueueCase const& run : polynl::testing::enqueueCases())
    {
        std::string const mismatch = polynl::testing::enqueueMismatch(creator, run);
        if (!mismatch.empty())
        {
            std::fprintf(stderr, "enqueue (%s, C'=%lld): %s\n%s", run.layout, static_cast<long long>(run.inner),
                mismatch.c_str(), logger.take().c_str());
        }
        CHECK(mismatch.empty());
    }
}

bool load(char const* path)
{
    library.handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (library.handle == nullptr)
    {
        std::fprintf(stderr, "cannot load %s: %s\n", path, dlerror());
        return false;
    }
    library.getCreators
        = reinterpret_cast<IPluginCreatorInterface* const* (*)(int32_t&)>(dlsym(library.handle, "getCreators"));
    library.setLoggerFinder = reinterpret_cast<void (*)(ILoggerFinder*)>(dlsym(library.handle, "setLoggerFinder"));
    if (library.getCreators == nullptr || library.setLoggerFinder == nullptr)
    {
        std::fprintf(stderr, "%s does not export getCreators and setLoggerFinder\n", path);
        return false;
    }
    int32_t count = 0;
    IPluginCreatorInterface* const* creators = library.getCreators(count);
    creator = count > 0 ? static_cast<IPluginCreatorV3One*>(creators[0]) : nullptr;
    return creator != nullptr;
}

} // namespace

int main(int argc, char** argv)
{
    bool const enqueue = argc == 3 && std::strcmp(argv[2], "--enqueue") == 0;
    if ((argc != 2 && !enqueue) || !load(argv[1]))
    {
        std::fprintf(stderr, "usage: %s <path/to/libpolynl_trt_plugin.so> [--enqueue]\n", argv[0]);
        return 2;
    }
    LoggerFinder finder(&logger);
    library.setLoggerFinder(&finder);

    std::vector<std::pair<char const*, void (*)()>> cases = {
        {"library exports", testLibraryExports},
        {"creator matches the op contract", testCreatorContract},
        {"createPlugin and capability interfaces", testCreateAndCapabilities},
        {"createPlugin rejects bad fields", testCreateRejectsBadFields},
        {"serialization round trip", testSerializationRoundTrip},
        {"clone and attachToContext", testCloneAndAttach},
        {"outputs and output types", testOutputsAndTypes},
        {"format combinations follow the core", testFormatCombinations},
        {"workspace size follows the core", testWorkspaceSize},
        {"configurePlugin / onShapeChange errors", testShapeErrors},
        {"getOutputShapes through IExprBuilder", testOutputShapes},
    };
    if (enqueue)
    {
        cases.emplace_back("enqueue on the CPU-emulated kernels", testEnqueueOnEmulatedKernels);
    }
    int32_t passed = 0;
    for (auto const& [name, run] : cases)
    {
        int const before = failures;
        run();
        bool const ok = failures == before;
        passed += ok;
        std::printf("[%s] %s\n", ok ? "PASS" : "FAIL", name);
    }
    library.setLoggerFinder(nullptr);
    std::printf("plugin_host_test (TensorRT %d.%d.%d headers%s): %d/%zu cases passed, %d checks, %d failed\n",
        NV_TENSORRT_MAJOR, NV_TENSORRT_MINOR, NV_TENSORRT_PATCH, enqueue ? ", emulated kernels" : "", passed,
        cases.size(), checks, failures);
    dlclose(library.handle);
    return failures == 0 ? 0 : 1;
}
