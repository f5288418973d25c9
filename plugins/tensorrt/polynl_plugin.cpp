#include "polynl_plugin.h"

#include "polynl_contract.h"
#include "polynl_kernels.h"

#include <cmath>
#include <cstring>
#include <exception>
#include <iostream>
#include <limits>
#include <mutex>
#include <optional>
#include <utility>

using namespace nvinfer1;

namespace polynl::trt
{
namespace
{

std::mutex loggerMutex;
ILoggerFinder* loggerFinder = nullptr;

//! Reports through the application's TensorRT logger (stderr before setLoggerFinder).
void logError(std::string const& message)
{
    std::string const text = std::string("[PolyNL plugin] ") + message;
    std::lock_guard<std::mutex> lock(loggerMutex);
    ILogger* logger = loggerFinder != nullptr ? loggerFinder->findLogger() : nullptr;
    if (logger != nullptr)
    {
        logger->log(ILogger::Severity::kERROR, text.c_str());
    }
    else
    {
        std::cerr << text << '\n';
    }
}

std::optional<core::DataType> coreType(DataType type)
{
    switch (type)
    {
    case DataType::kFLOAT: return core::DataType::kFloat32;
    case DataType::kHALF: return core::DataType::kFloat16;
    case DataType::kBF16: return core::DataType::kBFloat16;
    default: return std::nullopt;
    }
}

int32_t kernelType(core::DataType type)
{
    switch (type)
    {
    case core::DataType::kFloat32: return POLYNL_DTYPE_FLOAT32;
    case core::DataType::kFloat16: return POLYNL_DTYPE_FLOAT16;
    case core::DataType::kBFloat16: return POLYNL_DTYPE_BFLOAT16;
    }
    return -1;
}

core::Shape toShape(Dims const& dims)
{
    return core::Shape(dims.d, dims.d + dims.nbDims);
}

//! One float32 or float64 value, or nothing when the field holds anything else.
std::optional<double> readScalar(PluginField const& field)
{
    if (field.data == nullptr || field.length != 1)
    {
        return std::nullopt;
    }
    switch (field.type)
    {
    case PluginFieldType::kFLOAT32: return *static_cast<float const*>(field.data);
    case PluginFieldType::kFLOAT64: return *static_cast<double const*>(field.data);
    default: return std::nullopt;
    }
}

//! kCHAR bytes up to `length` or the first NUL (ONNX strings need not be NUL-terminated).
std::optional<std::string> readString(PluginField const& field)
{
    if (field.type != PluginFieldType::kCHAR || field.length < 0 || (field.data == nullptr && field.length > 0))
    {
        return std::nullopt;
    }
    if (field.length == 0)
    {
        return std::string();
    }
    auto const* text = static_cast<char const*>(field.data);
    return std::string(text, strnlen(text, static_cast<size_t>(field.length)));
}

//! Validates the nine input shapes (any of Dims' wildcards -1 allowed) and fills the problem.
template <typename DimsOf>
bool describe(int32_t nbInputs, DimsOf const& dimsOf, core::Layout layout, core::Problem* problem)
{
    std::vector<core::Shape> shapes;
    for (int32_t i = 0; i < nbInputs; ++i)
    {
        shapes.push_back(toShape(dimsOf(i)));
    }
    std::string const error = core::validateShapes(shapes, layout, problem);
    if (!error.empty())
    {
        logError(error);
        return false;
    }
    return true;
}

//! Slack so that enqueue can align TensorRT's workspace pointer to the kernels' 256 bytes.
constexpr size_t kWorkspaceAlignment = 256;

} // namespace

PolyNLPlugin::PolyNLPlugin(float alpha, core::Layout layout)
    : mAlpha(alpha)
    , mLayout(layout)
    , mLayoutName(core::layoutName(layout))
{
}

IPluginCapability* PolyNLPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

IPluginV3* PolyNLPlugin::clone() noexcept
{
    try
    {
        return new PolyNLPlugin(mAlpha, mLayout);
    }
    catch (std::exception const& e)
    {
        logError(e.what());
    }
    return nullptr;
}

char const* PolyNLPlugin::getPluginName() const noexcept
{
    return contract::kPluginName;
}

char const* PolyNLPlugin::getPluginVersion() const noexcept
{
    return contract::kPluginVersion;
}

char const* PolyNLPlugin::getPluginNamespace() const noexcept
{
    return contract::kPluginNamespace;
}

int32_t PolyNLPlugin::getNbOutputs() const noexcept
{
    return contract::kNumOutputs;
}

int32_t PolyNLPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbInputs != contract::kNumInputs || nbOutputs != contract::kNumOutputs)
    {
        logError("PolyNL takes 9 inputs and has 1 output");
        return 1;
    }
    outputTypes[0] = inputTypes[contract::kInputX];
    return 0;
}

int32_t PolyNLPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& /*exprBuilder*/) noexcept
{
    if (nbInputs != contract::kNumInputs || nbOutputs != contract::kNumOutputs)
    {
        logError("PolyNL takes 9 inputs and has 1 output");
        return 1;
    }
    outputs[0] = inputs[contract::kInputX]; // Y has the shape of X.
    return 0;
}

bool PolyNLPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (nbInputs != contract::kNumInputs || nbOutputs != contract::kNumOutputs || pos < 0 || pos > nbInputs)
    {
        return false;
    }
    PluginTensorDesc const& desc = inOut[pos].desc;
    std::optional<core::DataType> const type = coreType(desc.type);
    if (desc.format != TensorFormat::kLINEAR || !type)
    {
        return false;
    }
    if (pos == contract::kInputX)
    {
        return true;
    }
    if (pos == nbInputs) // Y
    {
        return desc.type == inOut[contract::kInputX].desc.type;
    }
    if (pos == contract::kInputWq)
    {
        return core::isSupportedType(*coreType(inOut[contract::kInputX].desc.type), *type);
    }
    return desc.type == inOut[contract::kInputWq].desc.type; // all weights share one type
}

int32_t PolyNLPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* /*out*/,
    int32_t /*nbOutputs*/) noexcept
{
    try
    {
        core::Problem problem;
        return describe(nbInputs, [in](int32_t i) { return in[i].desc.dims; }, mLayout, &problem) ? 0 : 1;
    }
    catch (std::exception const& e)
    {
        logError(e.what());
    }
    return 1;
}

size_t PolyNLPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    try
    {
        core::Problem problem;
        core::Problem smallest;
        if (!describe(nbInputs, [inputs](int32_t i) { return inputs[i].max; }, mLayout, &problem)
            || !describe(nbInputs, [inputs](int32_t i) { return inputs[i].min; }, mLayout, &smallest))
        {
            return 0;
        }
        std::optional<core::DataType> const xType = coreType(inputs[contract::kInputX].desc.type);
        std::optional<core::DataType> const weightType = coreType(inputs[contract::kInputWq].desc.type);
        if (!xType || !weightType)
        {
            logError("unsupported tensor data type");
            return 0;
        }
        problem.xType = *xType; // the float16/bfloat16 tensor-core path keeps a split copy of M
        problem.weightType = *weightType;
        std::string const error = core::validateProblem(problem);
        if (!error.empty())
        {
            logError(error);
            return 0;
        }
        // Each enqueue picks its path from its N; the bound covers every shape of the profile.
        return core::workspaceBound(problem, smallest.positions) + kWorkspaceAlignment;
    }
    catch (std::exception const& e)
    {
        logError(e.what());
    }
    return 0;
}

char const* PolyNLPlugin::getMetadataString() noexcept
{
    try
    {
        mMetadata = "alpha=" + std::to_string(mAlpha) + " layout=" + mLayoutName;
        return mMetadata.c_str();
    }
    catch (std::exception const&)
    {
        return nullptr;
    }
}

int32_t PolyNLPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* /*out*/, int32_t /*nbOutputs*/) noexcept
{
    try
    {
        core::Problem problem;
        return describe(nbInputs, [in](int32_t i) { return in[i].dims; }, mLayout, &problem) ? 0 : 1;
    }
    catch (std::exception const& e)
    {
        logError(e.what());
    }
    return 1;
}

int32_t PolyNLPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    try
    {
        core::Problem problem;
        if (!describe(contract::kNumInputs, [inputDesc](int32_t i) { return inputDesc[i].dims; }, mLayout, &problem))
        {
            return 1;
        }
        std::optional<core::DataType> const xType = coreType(inputDesc[contract::kInputX].type);
        std::optional<core::DataType> const weightType = coreType(inputDesc[contract::kInputWq].type);
        if (!xType || !weightType)
        {
            logError("unsupported tensor data type");
            return 1;
        }
        PolyNLDesc desc{};
        desc.batch = problem.batch;
        desc.channels = problem.channels;
        desc.inner = problem.inner;
        desc.positions = problem.positions;
        desc.layout = mLayout == core::Layout::kMaps ? POLYNL_LAYOUT_MAPS : POLYNL_LAYOUT_TOKENS;
        desc.x_dtype = kernelType(*xType);
        desc.weight_dtype = kernelType(*weightType);
        desc.path = POLYNL_PATH_AUTO;
        desc.alpha = mAlpha;

        size_t needed = 0;
        PolyNLStatus status = polynl_workspace_size(&desc, &needed);
        if (status == POLYNL_STATUS_SUCCESS)
        {
            // getWorkspaceSize added kWorkspaceAlignment bytes of slack for this.
            auto const address = reinterpret_cast<uintptr_t>(workspace);
            auto const aligned = (address + kWorkspaceAlignment - 1) / kWorkspaceAlignment * kWorkspaceAlignment;
            status = polynl_forward(&desc, inputs[contract::kInputX], inputs + contract::kInputWq, outputs[0],
                reinterpret_cast<void*>(aligned), needed, stream);
        }
        if (status != POLYNL_STATUS_SUCCESS)
        {
            logError(std::string(polynl_status_string(status)) + ": " + polynl_last_error());
            return 1;
        }
        return 0;
    }
    catch (std::exception const& e)
    {
        logError(e.what());
    }
    return 1;
}

IPluginV3* PolyNLPlugin::attachToContext(IPluginResourceContext* /*context*/) noexcept
{
    return clone();
}

PluginFieldCollection const* PolyNLPlugin::getFieldsToSerialize() noexcept
{
    try
    {
        // Only the creation state: alpha and layout (plugin_namespace/version identify the creator).
        mSerializedFields = {
            PluginField(contract::kAttrAlpha, &mAlpha, PluginFieldType::kFLOAT32, 1),
            PluginField(contract::kAttrLayout, mLayoutName.c_str(), PluginFieldType::kCHAR,
                static_cast<int32_t>(mLayoutName.size())),
        };
        mSerializedCollection.nbFields = static_cast<int32_t>(mSerializedFields.size());
        mSerializedCollection.fields = mSerializedFields.data();
        return &mSerializedCollection;
    }
    catch (std::exception const& e)
    {
        logError(e.what());
    }
    return nullptr;
}

PolyNLPluginCreator::PolyNLPluginCreator()
{
    for (contract::AttributeSpec const& attribute : contract::kAttributes)
    {
        bool const isFloat = attribute.kind == contract::FieldKind::kFloat32;
        mFields.emplace_back(attribute.name, nullptr, isFloat ? PluginFieldType::kFLOAT32 : PluginFieldType::kCHAR,
            isFloat ? 1 : 0);
    }
    mCollection.nbFields = static_cast<int32_t>(mFields.size());
    mCollection.fields = mFields.data();
}

char const* PolyNLPluginCreator::getPluginName() const noexcept
{
    return contract::kPluginName;
}

char const* PolyNLPluginCreator::getPluginVersion() const noexcept
{
    return contract::kPluginVersion;
}

char const* PolyNLPluginCreator::getPluginNamespace() const noexcept
{
    return contract::kPluginNamespace;
}

PluginFieldCollection const* PolyNLPluginCreator::getFieldNames() noexcept
{
    return &mCollection;
}

IPluginV3* PolyNLPluginCreator::createPlugin(
    char const* /*name*/, PluginFieldCollection const* fc, TensorRTPhase phase) noexcept
{
    try
    {
        float alpha = contract::kAttrAlphaDefault;
        std::string layoutName = contract::kAttrLayoutDefault;
        bool hasAlpha = false;
        bool hasLayout = false;
        for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
        {
            PluginField const& field = fc->fields[i];
            if (field.name == nullptr)
            {
                continue;
            }
            if (std::strcmp(field.name, contract::kAttrAlpha) == 0)
            {
                std::optional<double> const value = readScalar(field);
                if (!value || !std::isfinite(*value) || std::fabs(*value) > std::numeric_limits<float>::max())
                {
                    logError("field 'alpha' must be one finite float32 value");
                    return nullptr;
                }
                alpha = static_cast<float>(*value);
                hasAlpha = true;
            }
            else if (std::strcmp(field.name, contract::kAttrLayout) == 0)
            {
                std::optional<std::string> text = readString(field);
                if (!text)
                {
                    logError("field 'layout' must be kCHAR data");
                    return nullptr;
                }
                layoutName = std::move(*text);
                hasLayout = true;
            }
            // plugin_namespace and plugin_version select this creator; nothing to store.
        }
        // getFieldsToSerialize always writes both, so a missing one means a damaged engine.
        if (phase == TensorRTPhase::kRUNTIME && (!hasAlpha || !hasLayout))
        {
            logError("serialized plugin lacks field 'alpha' or 'layout'");
            return nullptr;
        }
        std::optional<core::Layout> const layout = core::parseLayout(layoutName);
        if (!layout)
        {
            logError("field 'layout' must be 'maps' or 'tokens', got '" + layoutName + "'");
            return nullptr;
        }
        return new PolyNLPlugin(alpha, *layout);
    }
    catch (std::exception const& e)
    {
        logError(e.what());
    }
    return nullptr;
}

} // namespace polynl::trt

extern "C" void setLoggerFinder(ILoggerFinder* finder)
{
    std::lock_guard<std::mutex> lock(polynl::trt::loggerMutex);
    polynl::trt::loggerFinder = finder;
}

extern "C" IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    try
    {
        static polynl::trt::PolyNLPluginCreator creator;
        static IPluginCreatorInterface* const creators[] = {&creator};
        nbCreators = 1;
        return creators;
    }
    catch (std::exception const& e) // no exception may reach TensorRT through this C entry point
    {
        polynl::trt::logError(e.what());
    }
    nbCreators = 0;
    return nullptr;
}
