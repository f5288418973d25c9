//! libpolynl_trt_plugin_preload.so: registers the PolyNL plugin creator when it is loaded, for hosts
//! that only dlopen a plugin library: Triton's `--backend-config=tensorrt,plugins=` and LD_PRELOAD.
//! TensorRT's own loaders (IPluginRegistry::loadLibrary, trtexec --dynamicPlugins, plugin libraries
//! serialized into version-compatible engines) take libpolynl_trt_plugin.so and call its getCreators;
//! registering there at load time as well would register the creator twice. So this small library
//! loads libpolynl_trt_plugin.so from its own folder and registers what its getCreators returns with
//! the registry of the TensorRT library of the process (POLYNL_NVINFER_SONAME, loaded if the host has
//! not loaded it yet, as linking it would).
#include "polynl_contract.h"

#include <NvInferRuntime.h>

#include <dlfcn.h>

#include <cstdint>
#include <cstdio>
#include <string>

#ifndef POLYNL_NVINFER_SONAME
#error "POLYNL_NVINFER_SONAME (the TensorRT runtime's soname, e.g. libnvinfer.so.10) must be defined"
#endif

namespace
{

using GetCreators = nvinfer1::IPluginCreatorInterface* const* (*) (int32_t&);
using GetPluginRegistry = nvinfer1::IPluginRegistry* (*) ();

constexpr char const* kPluginLibrary = "libpolynl_trt_plugin.so";

void report(std::string const& message)
{
    std::fprintf(stderr, "[polynl] libpolynl_trt_plugin_preload.so: %s\n", message.c_str());
}

//! libpolynl_trt_plugin.so in the folder this library was loaded from.
std::string pluginLibraryPath()
{
    Dl_info info{};
    if (dladdr(reinterpret_cast<void*>(&pluginLibraryPath), &info) == 0 || info.dli_fname == nullptr)
    {
        return kPluginLibrary;
    }
    std::string const self = info.dli_fname;
    auto const slash = self.rfind('/');
    return slash == std::string::npos ? kPluginLibrary : self.substr(0, slash + 1) + kPluginLibrary;
}

void* openLibrary(char const* path, int flags, std::string const& what)
{
    void* handle = dlopen(path, flags);
    if (handle == nullptr)
    {
        char const* error = dlerror();
        report("cannot load " + what + " " + path + ": " + (error ? error : "unknown error"));
    }
    return handle;
}

void* symbol(void* library, char const* name, std::string const& where)
{
    void* found = dlsym(library, name);
    if (found == nullptr)
    {
        report(where + " has no " + name);
    }
    return found;
}

//! The handles stay open: the registered creator lives in libpolynl_trt_plugin.so.
__attribute__((constructor)) void registerAtLoad()
{
    void* nvinfer = dlopen(POLYNL_NVINFER_SONAME, RTLD_NOW | RTLD_NOLOAD);
    if (nvinfer == nullptr) // LD_PRELOAD: before the host has loaded TensorRT
    {
        nvinfer = openLibrary(POLYNL_NVINFER_SONAME, RTLD_NOW, "the TensorRT runtime");
    }
    std::string const pluginPath = pluginLibraryPath();
    void* plugin = openLibrary(pluginPath.c_str(), RTLD_NOW | RTLD_LOCAL, "the PolyNL plugin library");
    if (nvinfer == nullptr || plugin == nullptr)
    {
        return;
    }
    auto* getRegistry
        = reinterpret_cast<GetPluginRegistry>(symbol(nvinfer, "getPluginRegistry", POLYNL_NVINFER_SONAME));
    auto* getCreators = reinterpret_cast<GetCreators>(symbol(plugin, "getCreators", pluginPath));
    nvinfer1::IPluginRegistry* registry = getRegistry != nullptr ? getRegistry() : nullptr;
    if (registry == nullptr || getCreators == nullptr)
    {
        return;
    }
    int32_t count = 0;
    nvinfer1::IPluginCreatorInterface* const* creators = getCreators(count);
    for (int32_t i = 0; creators != nullptr && i < count; ++i)
    {
        if (!registry->registerCreator(*creators[i], polynl::contract::kPluginNamespace))
        {
            report(std::string("the TensorRT plugin registry refused creator ") + polynl::contract::kPluginName
                + " (already registered?)");
        }
    }
}

} // namespace
