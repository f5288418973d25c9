//! Stand-in for libnvinfer in the preload test (built against the compile-check shim, with the soname
//! of the TensorRT runtime): its plugin registry records each registration as
//! "name/version/namespace given/creator's namespace;".
#include <NvInferRuntime.h>

#include <string>

namespace
{

class RecordingRegistry : public nvinfer1::IPluginRegistry
{
public:
    bool registerCreator(
        nvinfer1::IPluginCreatorInterface& creator, nvinfer1::AsciiChar const* const pluginNamespace) noexcept override
    {
        auto& v3 = static_cast<nvinfer1::IPluginCreatorV3One&>(creator);
        std::string const entry = std::string(v3.getPluginName()) + "/" + v3.getPluginVersion() + "/"
            + pluginNamespace + "/" + v3.getPluginNamespace() + ";";
        if (records.find(entry) != std::string::npos)
        {
            return false;
        }
        records += entry;
        return true;
    }

    std::string records;
};

RecordingRegistry registry;

} // namespace

extern "C" __attribute__((visibility("default"))) nvinfer1::IPluginRegistry* getPluginRegistry() noexcept
{
    return &registry;
}

extern "C" __attribute__((visibility("default"))) char const* registeredCreators()
{
    return registry.records.c_str();
}
