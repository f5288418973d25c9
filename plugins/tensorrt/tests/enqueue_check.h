// The plugin's runtime path on the CPU: createPlugin (runtime phase), onShapeChange, getWorkspaceSize
// and enqueue on host buffers, with the plugin linked against the CPU-emulated kernels
// (plugins/emulation), so that enqueue runs the real kernel source. Y is compared with the functional
// core's float64 reference. Compiles against the real TensorRT headers or the compile-check shim.
#pragma once

#include "NvInferRuntime.h"

#include "polynl_contract.h"
#include "polynl_core.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace polynl::testing
{

struct EnqueueCase
{
    char const* layout; //!< "maps": X is (B, C, H, W); "tokens": X is (B, N, C)
    std::vector<int64_t> x;
    int64_t inner;
    nvinfer1::DataType xType;
    nvinfer1::DataType weightType;
    float alpha;
};

//! Folded (tensor-core and SIMT kernels, C below and across a 64-channel tile) and unfolded (C' <= C/4, and
//! C' = C/2 at few positions, where AUTO picks it from N), both layouts,
//! X in float32, float16 and bfloat16 with weights in X's type or float32.
inline std::vector<EnqueueCase> enqueueCases()
{
    using nvinfer1::DataType;
    return {EnqueueCase{"tokens", {2, 37, 12}, 6, DataType::kHALF, DataType::kFLOAT, 0.5F},
        EnqueueCase{"maps", {2, 16, 5, 7}, 4, DataType::kFLOAT, DataType::kFLOAT, 1.0F},
        EnqueueCase{"maps", {1, 70, 12, 12}, 35, DataType::kBF16, DataType::kBF16, 0.75F},
        EnqueueCase{"tokens", {3, 9, 8}, 5, DataType::kFLOAT, DataType::kFLOAT, 1.25F},
        EnqueueCase{"tokens", {2, 10, 16}, 8, DataType::kHALF, DataType::kHALF, 1.0F}}; // unfolded: N < 2C
}

//! Values of one tensor: what the kernels read (bytes in the tensor's type) and the same values in double.
struct HostTensor
{
    nvinfer1::PluginTensorDesc desc{};
    std::vector<unsigned char> bytes;
    std::vector<double> values;
};

inline size_t elementSize(nvinfer1::DataType type)
{
    return type == nvinfer1::DataType::kFLOAT ? 4 : 2;
}

//! Stores v in `type` at element i and returns the value actually stored.
inline double store(HostTensor& t, size_t i, float v)
{
    switch (t.desc.type)
    {
    case nvinfer1::DataType::kHALF:
    {
        __half const h = __float2half(v);
        std::memcpy(t.bytes.data() + 2 * i, &h, 2);
        return __half2float(h);
    }
    case nvinfer1::DataType::kBF16:
    {
        __nv_bfloat16 const h = __float2bfloat16(v);
        std::memcpy(t.bytes.data() + 2 * i, &h, 2);
        return __bfloat162float(h);
    }
    default: std::memcpy(t.bytes.data() + 4 * i, &v, 4); return v;
    }
}

inline double load(HostTensor const& t, size_t i)
{
    switch (t.desc.type)
    {
    case nvinfer1::DataType::kHALF:
    {
        __half h;
        std::memcpy(&h, t.bytes.data() + 2 * i, 2);
        return __half2float(h);
    }
    case nvinfer1::DataType::kBF16:
    {
        __nv_bfloat16 h;
        std::memcpy(&h, t.bytes.data() + 2 * i, 2);
        return __bfloat162float(h);
    }
    default:
    {
        float v;
        std::memcpy(&v, t.bytes.data() + 4 * i, 4);
        return v;
    }
    }
}

inline HostTensor hostTensor(std::vector<int64_t> const& shape, nvinfer1::DataType type, std::mt19937& random)
{
    HostTensor t;
    t.desc.dims.nbDims = static_cast<int32_t>(shape.size());
    size_t count = 1;
    for (size_t d = 0; d < shape.size(); ++d)
    {
        t.desc.dims.d[d] = shape[d];
        count *= static_cast<size_t>(shape[d]);
    }
    t.desc.type = type;
    t.desc.format = nvinfer1::TensorFormat::kLINEAR;
    t.desc.scale = 1.0F;
    t.bytes.resize(count * elementSize(type));
    std::uniform_real_distribution<float> uniform(-1.0F, 1.0F);
    for (size_t i = 0; i < count; ++i)
    {
        t.values.push_back(store(t, i, uniform(random)));
    }
    return t;
}

//! "" when enqueue's Y matches the reference within the tolerance of X's type, else what went wrong.
inline std::string enqueueMismatch(nvinfer1::IPluginCreatorV3One* creator, EnqueueCase const& c)
{
    using namespace nvinfer1;
    PluginField const fields[] = {PluginField(contract::kAttrAlpha, &c.alpha, PluginFieldType::kFLOAT32, 1),
        PluginField(
            contract::kAttrLayout, c.layout, PluginFieldType::kCHAR, static_cast<int32_t>(std::strlen(c.layout)))};
    PluginFieldCollection const fc{2, fields};
    std::unique_ptr<IPluginV3> plugin(creator->createPlugin("block", &fc, TensorRTPhase::kRUNTIME));
    if (plugin == nullptr)
    {
        return "createPlugin failed";
    }
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));

    bool const maps = std::strcmp(c.layout, "maps") == 0;
    int64_t const channels = c.x[maps ? 1 : 2];
    int64_t const r = c.inner;
    std::vector<std::vector<int64_t>> const shapes{c.x, {channels, r}, {r}, {channels, r}, {r}, {channels, r}, {r},
        {r, channels}, {channels}};
    std::mt19937 random(static_cast<uint32_t>(channels * 131 + r));
    std::vector<HostTensor> inputs;
    for (size_t i = 0; i < shapes.size(); ++i)
    {
        inputs.push_back(hostTensor(shapes[i], i == 0 ? c.xType : c.weightType, random));
    }
    HostTensor output = hostTensor(c.x, c.xType, random);
    std::fill(output.bytes.begin(), output.bytes.end(), static_cast<unsigned char>(0xFF)); // NaN until written

    std::vector<PluginTensorDesc> in;
    std::vector<DynamicPluginTensorDesc> dynamicIn;
    for (HostTensor const& t : inputs)
    {
        in.push_back(t.desc);
        dynamicIn.push_back(DynamicPluginTensorDesc{t.desc, t.desc.dims, t.desc.dims, t.desc.dims});
    }
    DynamicPluginTensorDesc const dynamicOut{output.desc, output.desc.dims, output.desc.dims, output.desc.dims};
    if (runtime->onShapeChange(in.data(), contract::kNumInputs, &output.desc, 1) != 0)
    {
        return "onShapeChange failed";
    }
    size_t const workspaceBytes = build->getWorkspaceSize(dynamicIn.data(), contract::kNumInputs, &dynamicOut, 1);
    // TensorRT may hand over any address: start 64 bytes past a 256-byte boundary, with exactly the bytes asked for.
    std::vector<unsigned char> workspace(workspaceBytes + 512);
    auto const base = reinterpret_cast<uintptr_t>(workspace.data());
    void* const start = workspace.data() + ((256 - base % 256) % 256 + 64);

    std::vector<void const*> pointers;
    for (HostTensor const& t : inputs)
    {
        pointers.push_back(t.bytes.data());
    }
    void* const outputs[] = {output.bytes.data()};
    if (runtime->enqueue(in.data(), &output.desc, pointers.data(), outputs, start, nullptr) != 0)
    {
        return "enqueue failed";
    }

    core::Problem problem;
    problem.channels = channels;
    problem.inner = r;
    problem.layout = maps ? core::Layout::kMaps : core::Layout::kTokens;
    problem.batch = c.x[0];
    problem.positions = maps ? c.x[2] * c.x[3] : c.x[1];
    problem.alpha = c.alpha;
    std::vector<double const*> weights;
    for (size_t i = 1; i < inputs.size(); ++i)
    {
        weights.push_back(inputs[i].values.data());
    }
    std::vector<double> expected(inputs[0].values.size());
    core::Path const path = core::choosePath(channels, r, problem.positions);
    core::referenceForward(problem, path, inputs[0].values.data(), weights.data(), expected.data());

    // Y is rounded to X's type once: half an ulp of it, plus float32 accumulation error.
    double const epsilon = c.xType == DataType::kFLOAT ? 0.0 : c.xType == DataType::kHALF ? 0x1p-11 : 0x1p-8;
    double largest = 0.0;
    for (double v : expected)
    {
        largest = std::max(largest, std::fabs(v));
    }
    for (size_t i = 0; i < expected.size(); ++i)
    {
        double const got = load(output, i);
        double const allowed = epsilon * std::fabs(expected[i]) + 64 * 0x1p-24 * largest;
        if (!(std::fabs(got - expected[i]) <= allowed))
        {
            return "Y[" + std::to_string(i) + "] = " + std::to_string(got) + ", expected "
                + std::to_string(expected[i]);
        }
    }
    return "";
}

} // namespace polynl::testing
