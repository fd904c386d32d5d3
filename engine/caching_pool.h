// A caching allocator shared by the backends (the CUDA device layer, its emulation, and the CPU
// backend's large blocks): freed blocks are kept in free lists keyed by their rounded size and
// handed out again, so a training loop's per-step temporaries do not go back to the driver or
// the kernel each step (cudaMalloc/cudaFree synchronise the device; on the host, glibc returns
// blocks above its mmap threshold to the kernel on free, and every reuse then page-faults its
// pages in again: 30% of ResNet-9's CPU training time before this pool). Rounding: 512-byte
// granules up to 1 MiB, then 1 MiB granules beyond, so a block is at most ~2x (small) or 1 MiB
// larger than asked for. Reuse on the CUDA layer is stream-ordered: the layer has one stream.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

namespace iif {

struct PoolStats {
  std::size_t in_use_bytes = 0, cached_bytes = 0;
  std::uint64_t hits = 0, misses = 0;
};

// RawAlloc: void* (std::size_t) returning nullptr when out of memory; RawFree: void (void*).
template <class RawAlloc, class RawFree>
class CachingPool {
 public:
  // cap: the most bytes kept cached; a freed block that would exceed it goes back at once.
  CachingPool(RawAlloc a, RawFree f, std::size_t cap = ~std::size_t(0)) : raw_alloc_(a), raw_free_(f), cap_(cap) {}

  static std::size_t round(std::size_t bytes) {
    constexpr std::size_t kSmall = 512, kLarge = 1 << 20;
    return bytes <= kLarge ? (bytes + kSmall - 1) / kSmall * kSmall
                           : (bytes + kLarge - 1) / kLarge * kLarge;
  }

  void* allocate(std::size_t bytes) {
    if (bytes == 0) return nullptr;
    const std::size_t r = round(bytes);
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.find(r);
      if (it != free_.end() && !it->second.empty()) {
        void* p = it->second.back();
        it->second.pop_back();
        stats_.cached_bytes -= r;
        stats_.in_use_bytes += r;
        ++stats_.hits;
        live_[p] = r;
        return p;
      }
      ++stats_.misses;
    }
    void* p = raw_alloc_(r);
    if (!p) {  // out of memory: give the cache back and try once more
      release_cached();
      p = raw_alloc_(r);
      if (!p) throw std::bad_alloc();
    }
    std::lock_guard<std::mutex> lock(mu_);
    stats_.in_use_bytes += r;
    live_[p] = r;
    return p;
  }

  void deallocate(void* p) {
    if (!p) return;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = live_.find(p);
    if (it == live_.end()) return;  // not ours (never happens through Storage)
    const std::size_t r = it->second;
    live_.erase(it);
    stats_.in_use_bytes -= r;
    if (stats_.cached_bytes + r > cap_) {
      raw_free_(p);
      return;
    }
    stats_.cached_bytes += r;
    free_[r].push_back(p);
  }

  void release_cached() {
    std::map<std::size_t, std::vector<void*>> drop;
    {
      std::lock_guard<std::mutex> lock(mu_);
      drop.swap(free_);
      stats_.cached_bytes = 0;
    }
    for (auto& kv : drop)
      for (void* p : kv.second) raw_free_(p);
  }

  PoolStats stats() const {
    std::lock_guard<std::mutex> lock(mu_);
    return stats_;
  }

 private:
  RawAlloc raw_alloc_;
  RawFree raw_free_;
  std::size_t cap_;
  mutable std::mutex mu_;
  std::map<std::size_t, std::vector<void*>> free_;
  std::unordered_map<void*, std::size_t> live_;
  PoolStats stats_;
};

template <class A, class F>
CachingPool<A, F>* make_pool(A a, F f, std::size_t cap = ~std::size_t(0)) {
  return new CachingPool<A, F>(a, f, cap);  // never destroyed: tensors may be freed at exit
}

}  // namespace iif
