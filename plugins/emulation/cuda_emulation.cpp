// Runtime of the CUDA emulation (cuda_emulation.h): launches on a pool of OS threads, barriers that
// check CUDA's synchronisation rules, the checks of warp-collective wmma calls, and the CUDA runtime
// calls the kernels' host code makes.
#include "cuda_emulation.h"

#include <algorithm>
#include <array>
#include <barrier>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace cuda_emulation
{
namespace
{

constexpr unsigned kWarpSize = 32;
constexpr unsigned kMaxThreadsPerBlock = 1024;
//! A launch in which no barrier completes for this long is reported as deadlocked.
constexpr std::chrono::seconds kDeadlockTimeout{60};

std::string where(Site const& site)
{
    return std::string(site.file_name()) + ":" + std::to_string(site.line()) + " in " + site.function_name();
}

bool sameSite(Site const& a, Site const& b)
{
    return a.line() == b.line() && a.column() == b.column() && std::strcmp(a.file_name(), b.file_name()) == 0;
}

std::string coordinates(uint3 const& i)
{
    return "(" + std::to_string(i.x) + ", " + std::to_string(i.y) + ", " + std::to_string(i.z) + ")";
}

class Launch;

//! A barrier of a fixed group of threads (a block, or a warp exchanging values). It completes when every
//! member that has not returned from the kernel has arrived, and reports what CUDA does not allow: a
//! barrier that a returned member can no longer reach, or members waiting at different statements.
class GroupBarrier
{
public:
    GroupBarrier(unsigned size, char const* name)
        : name_(name)
        , size_(size)
        , sites_(size)
        , returned_(size, 0)
        , state_(pack(size, 0))
    {
    }

    //! Waits until the group has arrived; `member` is the caller's index in the group.
    void arrive(unsigned member, Site const& site, Launch& launch);

    //! The caller returned from the kernel: the group no longer waits for it.
    void leave(unsigned member, Launch& launch);

    //! Every member is back (between blocks, while no member uses the barrier).
    void reset()
    {
        std::fill(returned_.begin(), returned_.end(), 0);
        state_.store(pack(size_, 0));
    }

private:
    // state_ packs the members still running the kernel (high half) and those waiting (low half), so
    // that one atomic operation decides which arrival or departure completes the barrier.
    static uint64_t pack(uint64_t live, uint64_t arrived)
    {
        return live << 32 | arrived;
    }
    static unsigned liveOf(uint64_t state)
    {
        return static_cast<unsigned>(state >> 32);
    }
    static unsigned arrivedOf(uint64_t state)
    {
        return static_cast<unsigned>(state);
    }

    //! Checks the arrivals and releases the waiting members; runs in the thread that completed the group.
    void complete(uint64_t state, Launch& launch);

    char const* name_;
    unsigned size_;
    std::vector<Site> sites_;          //!< where each member arrived
    std::vector<uint8_t> returned_;    //!< members that returned from the kernel
    std::atomic<uint64_t> state_;
    std::atomic<uint32_t> generation_{0};
};

//! One warp's lanes and the slots they exchange values through (shuffles, the arguments of wmma calls).
//! Consecutive exchanges use alternate slot sets, so one barrier per exchange suffices: a lane can only
//! overwrite a set after the barrier of the next exchange, which every lane reaches after reading the set.
struct Warp
{
    explicit Warp(unsigned lanes)
        : lanes(lanes)
        , barrier(lanes, "__shfl_down_sync/wmma")
    {
    }

    unsigned lanes;
    GroupBarrier barrier;
    std::array<std::array<std::array<std::byte, 16>, kWarpSize>, 2> slots{};
    std::array<uint8_t, kWarpSize> slotSet{}; //!< per lane: the set its next exchange writes
};

//! One kernel launch: the grid, the function every thread runs, the barriers of the running block.
class Launch
{
public:
    Launch(dim3 grid, dim3 block, std::function<void()> const& thread)
        : grid_(grid)
        , block_(block)
        , threads_(block.x * block.y * block.z)
        , thread_(thread)
        , blockBarrier_(threads_, "__syncthreads")
        , endOfBlock_(threads_, EndOfBlock{this})
    {
        for (unsigned first = 0; first < threads_; first += kWarpSize)
        {
            warps_.push_back(std::make_unique<Warp>(std::min(kWarpSize, threads_ - first)));
        }
    }

    unsigned threads() const
    {
        return threads_;
    }

    //! Barrier completions so far; a deadlock is a launch whose progress stops.
    uint64_t progress() const
    {
        return progress_.load();
    }

    std::string error()
    {
        std::lock_guard lock(errorMutex_);
        return error_;
    }

    //! Runs thread `t` (linear index in the block) of every block, the blocks in order x, y, z.
    void runThread(unsigned t);

    void syncThreads(unsigned t, Site const& site)
    {
        blockBarrier_.arrive(t, site, *this);
    }

    void shuffleDown(unsigned t, void* value, std::size_t bytes, unsigned mask, unsigned delta, Site const& site);

    void warpMatrixCall(unsigned t, char const* name, void const* pointer, unsigned ldm, std::size_t elementBytes,
        Site const& site);

    void countMma(unsigned t)
    {
        if (t % kWarpSize == 0)
        {
            mmaCalls_.fetch_add(1, std::memory_order_relaxed);
        }
    }

    uint64_t mmaCalls() const
    {
        return mmaCalls_.load();
    }

    //! Records a broken rule (the first one is reported) with the calling thread's coordinates.
    void fail(std::string const& message)
    {
        std::lock_guard lock(errorMutex_);
        if (error_.empty())
        {
            error_ = "block " + coordinates(blockIdx) + ", thread " + coordinates(threadIdx) + ": " + message;
        }
    }

    void countProgress()
    {
        progress_.fetch_add(1, std::memory_order_relaxed);
    }

private:
    //! Runs once all threads of a block have returned: the barriers are fresh for the next block.
    struct EndOfBlock
    {
        Launch* launch;
        void operator()() const noexcept
        {
            launch->blockBarrier_.reset();
            for (auto& warp : launch->warps_)
            {
                warp->barrier.reset();
                warp->slotSet.fill(0);
            }
            launch->countProgress();
        }
    };

    dim3 grid_;
    dim3 block_;
    unsigned threads_;
    std::function<void()> const& thread_;
    GroupBarrier blockBarrier_;
    std::vector<std::unique_ptr<Warp>> warps_;
    std::barrier<EndOfBlock> endOfBlock_;
    std::atomic<uint64_t> progress_{0};
    std::atomic<uint64_t> mmaCalls_{0};
    std::mutex errorMutex_;
    std::string error_;
};

void GroupBarrier::arrive(unsigned member, Site const& site, Launch& launch)
{
    sites_[member] = site;
    uint32_t const generation = generation_.load(std::memory_order_acquire);
    uint64_t const state = state_.fetch_add(1, std::memory_order_acq_rel) + 1;
    if (arrivedOf(state) == liveOf(state))
    {
        complete(state, launch);
    }
    else
    {
        generation_.wait(generation, std::memory_order_acquire);
    }
}

void GroupBarrier::leave(unsigned member, Launch& launch)
{
    returned_[member] = 1;
    uint64_t const state = state_.fetch_sub(pack(1, 0), std::memory_order_acq_rel) - pack(1, 0);
    unsigned const arrived = arrivedOf(state);
    if (arrived == 0)
    {
        return;
    }
    launch.fail(std::string("returned from the kernel while other threads wait at ") + name_);
    if (arrived == liveOf(state))
    {
        complete(state, launch);
    }
}

void GroupBarrier::complete(uint64_t state, Launch& launch)
{
    unsigned const live = liveOf(state);
    Site const* first = nullptr;
    for (unsigned m = 0; m < size_; ++m)
    {
        if (returned_[m])
        {
            continue;
        }
        if (first == nullptr)
        {
            first = &sites_[m];
        }
        else if (!sameSite(*first, sites_[m]))
        {
            launch.fail(std::string("threads of one group wait at different ") + name_ + " calls: " + where(*first)
                + " and " + where(sites_[m]));
            break;
        }
    }
    if (live < size_ && first != nullptr)
    {
        launch.fail(std::string(name_) + " at " + where(*first) + " after " + std::to_string(size_ - live)
            + " thread(s) of the group returned from the kernel");
    }
    state_.store(pack(live, 0), std::memory_order_release);
    launch.countProgress();
    generation_.fetch_add(1, std::memory_order_release);
    generation_.notify_all();
}

thread_local Launch* currentLaunch = nullptr;
thread_local unsigned currentThread = 0;

Launch& current(char const* call)
{
    if (currentLaunch == nullptr)
    {
        std::fprintf(stderr, "cuda_emulation: %s called outside a kernel\n", call);
        std::abort();
    }
    return *currentLaunch;
}

void Launch::runThread(unsigned t)
{
    currentLaunch = this;
    currentThread = t;
    threadIdx = {t % block_.x, t / block_.x % block_.y, t / (block_.x * block_.y)};
    blockDim = block_;
    gridDim = grid_;
    Warp& warp = *warps_[t / kWarpSize];
    for (unsigned z = 0; z < grid_.z; ++z)
    {
        for (unsigned y = 0; y < grid_.y; ++y)
        {
            for (unsigned x = 0; x < grid_.x; ++x)
            {
                blockIdx = {x, y, z};
                thread_();
                warp.barrier.leave(t % kWarpSize, *this);
                blockBarrier_.leave(t, *this);
                endOfBlock_.arrive_and_wait();
            }
        }
    }
    currentLaunch = nullptr;
}

void Launch::shuffleDown(unsigned t, void* value, std::size_t bytes, unsigned mask, unsigned delta, Site const& site)
{
    Warp& warp = *warps_[t / kWarpSize];
    unsigned const lane = t % kWarpSize;
    unsigned const allLanes = warp.lanes == kWarpSize ? ~0U : (1U << warp.lanes) - 1;
    if (mask != allLanes)
    {
        fail("__shfl_down_sync at " + where(site) + ": the emulation supports full-warp masks only");
    }
    auto& slots = warp.slots[warp.slotSet[lane]];
    warp.slotSet[lane] ^= 1;
    std::memcpy(slots[lane].data(), value, bytes);
    warp.barrier.arrive(lane, site, *this);
    if (lane + delta < warp.lanes)
    {
        std::memcpy(value, slots[lane + delta].data(), bytes);
    }
}

void Launch::warpMatrixCall(
    unsigned t, char const* name, void const* pointer, unsigned ldm, std::size_t elementBytes, Site const& site)
{
    auto report = [&](std::string const& problem)
    { fail(std::string(name) + " at " + where(site) + ": " + problem); };
    Warp& warp = *warps_[t / kWarpSize];
    if (warp.lanes != kWarpSize)
    {
        report("needs a full warp of 32 threads; this one has " + std::to_string(warp.lanes));
    }
    if (pointer != nullptr && reinterpret_cast<uintptr_t>(pointer) % 32 != 0)
    {
        report("the pointer is not 32-byte (256-bit) aligned");
    }
    if (pointer != nullptr && ldm * elementBytes % 16 != 0)
    {
        report("ldm " + std::to_string(ldm) + " is not a multiple of " + std::to_string(16 / elementBytes) + " elements");
    }
    // Every lane at this call (the barrier checks the site and lanes that returned), with lane 0's arguments.
    struct Arguments
    {
        void const* pointer;
        uint64_t ldm;
    };
    Arguments const mine{pointer, ldm};
    unsigned const lane = t % kWarpSize;
    auto& slots = warp.slots[warp.slotSet[lane]];
    warp.slotSet[lane] ^= 1;
    std::memcpy(slots[lane].data(), &mine, sizeof mine);
    warp.barrier.arrive(lane, site, *this);
    Arguments first{};
    std::memcpy(&first, slots[0].data(), sizeof first);
    if (first.pointer != mine.pointer || first.ldm != mine.ldm)
    {
        report("the lanes of a warp pass different pointers or ldm");
    }
}

//! Persistent OS threads; thread t of every block of a launch runs on worker t. Every worker takes part
//! in every launch (those beyond the block size return at once), so none can miss or repeat one.
class ThreadPool
{
public:
    static ThreadPool& instance()
    {
        static ThreadPool pool;
        return pool;
    }

    ~ThreadPool()
    {
        stopping_.store(true);
        generation_.fetch_add(1);
        generation_.notify_all();
        for (auto& worker : workers_)
        {
            worker.join();
        }
    }

    //! Runs the launch on the workers and waits for it; aborts the process on a deadlock.
    void run(Launch& launch)
    {
        while (workers_.size() < launch.threads())
        {
            workers_.emplace_back(&ThreadPool::work, this, static_cast<unsigned>(workers_.size()), generation_.load());
        }
        launch_.store(&launch);
        running_.store(static_cast<unsigned>(workers_.size()));
        generation_.fetch_add(1, std::memory_order_release);
        generation_.notify_all();

        std::unique_lock lock(doneMutex_);
        uint64_t progress = launch.progress();
        while (!done_.wait_for(lock, kDeadlockTimeout, [this] { return running_.load() == 0; }))
        {
            if (launch.progress() == progress)
            {
                std::fprintf(stderr,
                    "cuda_emulation: no barrier of the launch completed for %lld s: threads wait at barriers that "
                    "others never reach (deadlock)\n",
                    static_cast<long long>(kDeadlockTimeout.count()));
                std::abort();
            }
            progress = launch.progress();
        }
    }

private:
    void work(unsigned index, uint32_t seen)
    {
        for (;;)
        {
            generation_.wait(seen, std::memory_order_acquire);
            seen = generation_.load(std::memory_order_acquire);
            if (stopping_.load())
            {
                return;
            }
            Launch& launch = *launch_.load();
            if (index < launch.threads())
            {
                launch.runThread(index);
            }
            if (running_.fetch_sub(1) == 1)
            {
                std::lock_guard lock(doneMutex_);
                done_.notify_one();
            }
        }
    }

    std::vector<std::thread> workers_;
    std::atomic<uint32_t> generation_{0};
    std::atomic<Launch*> launch_{nullptr};
    std::atomic<unsigned> running_{0};
    std::atomic<bool> stopping_{false};
    std::mutex doneMutex_;
    std::condition_variable done_;
};

thread_local cudaError_t lastError = cudaSuccess;

std::string configurationError(dim3 grid, dim3 block)
{
    uint64_t const threads = uint64_t{block.x} * block.y * block.z;
    if (threads == 0 || threads > kMaxThreadsPerBlock || block.z > 64)
    {
        return "block " + coordinates({block.x, block.y, block.z}) + " is not 1 to 1024 threads (z <= 64)";
    }
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffU || grid.y > 65535 || grid.z > 65535)
    {
        return "grid " + coordinates({grid.x, grid.y, grid.z}) + " has an empty or too large dimension";
    }
    return "";
}

} // namespace

void launch(dim3 grid, dim3 block, cudaStream_t /*stream: all work is synchronous*/,
    std::function<void()> const& thread)
{
    std::string const configuration = configurationError(grid, block);
    if (!configuration.empty())
    {
        std::fprintf(stderr, "cuda_emulation: invalid launch configuration: %s\n", configuration.c_str());
        lastError = cudaErrorInvalidConfiguration;
        return;
    }
    static std::mutex oneAtATime; // __shared__ statics and the pool serve one launch at a time
    std::lock_guard lock(oneAtATime);
    Launch launch(grid, block, thread);
    ThreadPool::instance().run(launch);
    if (char const* trace = std::getenv("CUDA_EMULATION_TRACE"); trace != nullptr && std::strcmp(trace, "1") == 0)
    {
        std::fprintf(stderr, "cuda_emulation: launch grid %s block %s: %llu mma_sync\n",
            coordinates({grid.x, grid.y, grid.z}).c_str(), coordinates({block.x, block.y, block.z}).c_str(),
            static_cast<unsigned long long>(launch.mmaCalls()));
    }
    std::string const error = launch.error();
    if (!error.empty())
    {
        std::fprintf(stderr, "cuda_emulation: kernel launch failed: %s\n", error.c_str());
        lastError = cudaErrorLaunchFailure;
    }
}

void syncThreads(Site const& site)
{
    current("__syncthreads").syncThreads(currentThread, site);
}

void shuffleDown(void* value, std::size_t bytes, unsigned mask, unsigned delta, Site const& site)
{
    current("__shfl_down_sync").shuffleDown(currentThread, value, bytes, mask, delta, site);
}

void warpMatrixCall(char const* name, void const* pointer, unsigned ldm, std::size_t elementBytes, Site const& site)
{
    current(name).warpMatrixCall(currentThread, name, pointer, ldm, elementBytes, site);
}

void countMma()
{
    current("mma_sync").countMma(currentThread);
}

unsigned laneId()
{
    return currentThread % kWarpSize;
}

} // namespace cuda_emulation

// The runtime calls, hidden so that a process that also loads the real CUDA runtime keeps both apart.
#define CUDA_EMULATION_HIDDEN __attribute__((visibility("hidden")))

extern "C" CUDA_EMULATION_HIDDEN cudaError_t cudaGetLastError()
{
    return std::exchange(cuda_emulation::lastError, cudaSuccess);
}

extern "C" CUDA_EMULATION_HIDDEN cudaError_t cudaGetDevice(int* device)
{
    *device = 0;
    return cudaSuccess;
}

namespace
{

//! An architecture (10 * major + minor) from the environment variable `name`, else `fallback`; 0 (and a
//! message) when it is set to something else.
long architectureFrom(char const* name, long fallback)
{
    char const* text = std::getenv(name);
    if (text == nullptr)
    {
        return fallback;
    }
    char* end = nullptr;
    long const value = std::strtol(text, &end, 10);
    if (end == text || *end != '\0' || value < 10 || value > 999)
    {
        std::fprintf(stderr, "cuda_emulation: %s=%s is not an architecture such as 75 or 90\n", name, text);
        return 0;
    }
    return value;
}

long emulatedSm()
{
    return architectureFrom("CUDA_EMULATION_SM", 90);
}

} // namespace

int cudaEmulationPtxVersion()
{
    return static_cast<int>(architectureFrom("CUDA_EMULATION_PTX", emulatedSm()));
}

//! The one emulated device; its compute capability is CUDA_EMULATION_SM (10 * major + minor, default 90).
extern "C" CUDA_EMULATION_HIDDEN cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device)
{
    if (device != 0)
    {
        return cudaErrorInvalidDevice;
    }
    long const sm = emulatedSm();
    if (sm == 0)
    {
        return cudaErrorInvalidValue;
    }
    switch (attr)
    {
    case cudaDevAttrComputeCapabilityMajor: *value = static_cast<int>(sm / 10); return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *value = static_cast<int>(sm % 10); return cudaSuccess;
    default: return cudaErrorInvalidValue;
    }
}

//! Every kernel counts as compiled for CUDA_EMULATION_PTX and run on the emulated device.
extern "C" CUDA_EMULATION_HIDDEN cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, void const* func)
{
    int const ptx = cudaEmulationPtxVersion();
    if (attr == nullptr || func == nullptr || ptx == 0)
    {
        return cudaErrorInvalidValue;
    }
    *attr = cudaFuncAttributes{};
    attr->ptxVersion = ptx;
    attr->binaryVersion = static_cast<int>(emulatedSm());
    return cudaSuccess;
}

extern "C" CUDA_EMULATION_HIDDEN char const* cudaGetErrorString(cudaError_t error)
{
    switch (error)
    {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchFailure: return "unspecified launch failure (cuda_emulation: details on stderr)";
    default: return "unrecognized error code";
    }
}
