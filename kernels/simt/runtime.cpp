// The host SIMT emulator: blocks run on worker threads, one block at a time per worker, and
// the threads of a block are stackful fibers (boost.context fcontext) on mmap'd, guarded,
// pooled stacks. A scheduler resumes each runnable fiber in rounds, in the order the launch
// asks for; a fiber runs until it reaches __syncthreads, a warp operation or its end.
#include "kernels/simt/runtime.h"

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <boost/context/detail/fcontext.hpp>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <map>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

// Sanitizers: AddressSanitizer must be told about every stack switch; ThreadSanitizer sees
// each CUDA thread as a fiber of its own, synchronised only where CUDA synchronises (barriers,
// warp operations), so it names the line of a shared-memory race.
#if defined(__SANITIZE_ADDRESS__)
#define SIMT_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SIMT_ASAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define SIMT_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SIMT_TSAN 1
#endif
#endif
#if defined(SIMT_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#if defined(SIMT_TSAN)
#include <sanitizer/tsan_interface.h>
extern "C" void AnnotateIgnoreReadsBegin(const char* file, int line);
extern "C" void AnnotateIgnoreReadsEnd(const char* file, int line);
#endif

namespace bctx = boost::context::detail;

namespace simt {

namespace detail {
__thread FiberCoords* t_fiber = nullptr;
}  // namespace detail

namespace {

using detail::BarrierKind;
using detail::Site;
using detail::WarpKind;

// ---- options -------------------------------------------------------------------------------

std::mutex g_options_mutex;
Options g_options;
thread_local LaunchStats t_last_stats;

std::string str(dim3 d) {
  return "(" + std::to_string(d.x) + "," + std::to_string(d.y) + "," + std::to_string(d.z) + ")";
}
std::string str(Site s) { return std::string(s.file) + ":" + std::to_string(s.line); }
std::string hex(unsigned m) {
  std::ostringstream o;
  o << "0x" << std::hex << m;
  return o.str();
}
bool same_site(Site a, Site b) {
  return a.line == b.line && (a.file == b.file || std::strcmp(a.file, b.file) == 0);
}
const char* op_name(WarpKind k) {
  switch (k) {
    case WarpKind::sync: return "__syncwarp";
    case WarpKind::shfl_idx: return "__shfl_sync";
    case WarpKind::shfl_up: return "__shfl_up_sync";
    case WarpKind::shfl_down: return "__shfl_down_sync";
    case WarpKind::shfl_xor: return "__shfl_xor_sync";
    case WarpKind::ballot: return "__ballot_sync/__any_sync/__all_sync";
  }
  return "?";
}

[[noreturn]] void fail(Site site, const std::string& what) {
  throw std::runtime_error(str(site) + ": simt: " + what);
}

// ---- stacks --------------------------------------------------------------------------------

struct Stack {
  void* base = nullptr;  // the guard page; the usable stack is above it
  std::size_t total = 0;
  void* top() const { return static_cast<char*>(base) + total; }
  std::size_t usable() const { return total - static_cast<std::size_t>(sysconf(_SC_PAGESIZE)); }
};

Stack map_stack(std::size_t bytes) {
  const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  Stack s;
  s.total = (bytes + page - 1) / page * page + page;
  void* p = mmap(nullptr, s.total, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
  if (p == MAP_FAILED) {
    throw std::runtime_error("simt: cannot map a fiber stack of " + std::to_string(s.total) +
                             " bytes: " + std::strerror(errno));
  }
  // Stacks grow down: a PROT_NONE page below each one turns an overflow into a SIGSEGV
  // instead of silent corruption of the neighbouring fiber's stack.
  if (mprotect(p, page, PROT_NONE) != 0) {
    munmap(p, s.total);
    throw std::runtime_error(std::string("simt: cannot protect a stack guard page: ") + std::strerror(errno));
  }
  s.base = p;
  return s;
}

// ---- fibers and blocks ---------------------------------------------------------------------

struct Block;

enum class State : std::uint8_t { runnable, at_barrier, at_warp, exited };

struct Fiber : detail::FiberCoords {
  bctx::fcontext_t ctx = nullptr;
  Block* blk = nullptr;
  unsigned linear = 0, warp = 0, lane = 0;
  State state = State::runnable;
  // The pending warp operation: this lane's part of it, and its result once released.
  WarpKind kind = WarpKind::sync;
  unsigned mask = 0;
  int param = 0, width = 32;
  std::uint64_t value = 0, result = 0;
  Site site{"", 0};
  // Sanitizer state: the stack's extent, ASan's fake stack, TSan's fiber and the addresses
  // this lane releases to at warp operations (two, alternating, so that a lane running ahead
  // to its next operation does not leak later writes into an earlier one's acquire).
  void* stack_lo = nullptr;
  std::size_t stack_size = 0;
  void* asan_fake = nullptr;
  void* tsan_fiber = nullptr;
  bool started = false;
  unsigned warp_ops = 0;
  unsigned peer_mask = 0, peer_parity = 0;
  char lane_sync[2] = {0, 0};
};

struct Warp {
  unsigned existing = 0;  // lanes that exist (the last warp of a block may be partial)
  unsigned exited = 0;
  unsigned waiting = 0;  // lanes suspended at a warp operation
};

struct Block {
  detail::BlockCoords coords;
  const detail::LaunchSpec* spec = nullptr;
  Fiber* fibers = nullptr;
  unsigned n = 0;
  std::vector<Warp> warps;
  bctx::fcontext_t sched = nullptr;  // the scheduler, while a fiber runs
  unsigned live = 0;
  unsigned at_barrier = 0;
  unsigned barrier_true = 0;  // threads at the barrier with a true predicate
  int barrier_result = 0;
  BarrierKind barrier_kind = BarrierKind::plain;
  Site barrier_site{"", 0};
  int first_exited = -1;
  std::exception_ptr error;
  void* smem = nullptr;
  std::uint64_t resumes = 0, rounds = 0;
  // Sanitizer state of the scheduler side, and the barrier's two alternating sync addresses.
  const void* sched_lo = nullptr;
  std::size_t sched_size = 0;
  void* tsan_sched = nullptr;
  unsigned barrier_gen = 0;
  char barrier_sync[2] = {0, 0};

  Fiber& lane(unsigned warp, unsigned l) { return fibers[warp * 32u + l]; }
  std::string where(const Fiber& f) const {
    return "thread " + str(f.thread_idx) + " of block " + str(coords.block_idx);
  }
};

// What a worker keeps between blocks: stacks, fiber records, the dynamic shared buffer.
struct WorkerCache {
  std::vector<Stack> stacks;
  std::size_t stack_bytes = 0;
  std::vector<Fiber> fibers;
  std::vector<unsigned> order;
  unsigned char* smem = nullptr;
  std::size_t smem_cap = 0;
  ~WorkerCache() {
#if defined(SIMT_TSAN)
    for (Fiber& f : fibers) {
      if (f.tsan_fiber != nullptr) __tsan_destroy_fiber(f.tsan_fiber);
    }
#endif
    for (Stack& s : stacks) munmap(s.base, s.total);
#if defined(SIMT_ASAN)
    if (smem != nullptr) __asan_unpoison_memory_region(smem, smem_cap);
#endif
    std::free(smem);
  }
};
thread_local WorkerCache t_cache;

[[noreturn, gnu::cold, gnu::noinline]] void fail_outside(Site site, const char* what) {
  fail(site, std::string(what) + " called outside a kernel launched by simt::launch");
}

inline Fiber* current(Site site, const char* what) {
  auto* f = static_cast<Fiber*>(detail::t_fiber);
  if (__builtin_expect(f == nullptr, 0)) fail_outside(site, what);
  return f;
}

// ---- sanitizer hooks (empty in a normal build) ------------------------------------------------

// The emulator's own bookkeeping is shared by all fibers of a block on purpose: TSan must
// check only the kernel's accesses.
struct RuntimeSection {
#if defined(SIMT_TSAN)
  RuntimeSection() { AnnotateIgnoreReadsBegin(__FILE__, __LINE__); }
  ~RuntimeSection() { AnnotateIgnoreReadsEnd(__FILE__, __LINE__); }
#else
  ~RuntimeSection() {}  // user-provided: an RAII guard, not an unused variable
#endif
};

inline void tsan_release(void* addr) {
#if defined(SIMT_TSAN)
  __tsan_release(addr);
#else
  (void)addr;
#endif
}
inline void tsan_acquire(void* addr) {
#if defined(SIMT_TSAN)
  __tsan_acquire(addr);
#else
  (void)addr;
#endif
}

// Called by a fiber each time it gains control.
inline void fiber_arrived(Fiber* f) {
#if defined(SIMT_ASAN)
  Block& b = *f->blk;
  __sanitizer_finish_switch_fiber(f->asan_fake, &b.sched_lo, &b.sched_size);
#else
  (void)f;
#endif
}

// Called by a fiber right before it switches to the scheduler; `last` when it never returns.
inline void fiber_leaving(Fiber* f, bool last) {
  Block& b = *f->blk;
#if defined(SIMT_ASAN)
  __sanitizer_start_switch_fiber(last ? nullptr : &f->asan_fake, b.sched_lo, b.sched_size);
#endif
#if defined(SIMT_TSAN)
  __tsan_switch_to_fiber(b.tsan_sched, __tsan_switch_to_fiber_no_sync);
#endif
  (void)b;
  (void)last;
}

void suspend(Fiber* f) {
  Block& b = *f->blk;
  fiber_leaving(f, false);
  const bctx::transfer_t t = bctx::jump_fcontext(b.sched, nullptr);
  b.sched = t.fctx;
  fiber_arrived(f);
}

void resume(Block& b, Fiber& f) {
  detail::t_fiber = &f;
#if defined(SIMT_ASAN)
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f.stack_lo, f.stack_size);
#endif
#if defined(SIMT_TSAN)
  // The first switch synchronises: the kernel sees what the host wrote before the launch.
  __tsan_switch_to_fiber(f.tsan_fiber, f.started ? __tsan_switch_to_fiber_no_sync : 0);
#endif
  f.started = true;
  const bctx::transfer_t t = bctx::jump_fcontext(f.ctx, &f);
#if defined(SIMT_ASAN)
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  f.ctx = t.fctx;
  detail::t_fiber = nullptr;
  ++b.resumes;
}

// A thread ran off the end of the kernel: any barrier or warp operation still waiting for it
// can never complete. On a GPU that is a hang or undefined behaviour; here it is an error.
void on_exit(Fiber* f) {
  Block& b = *f->blk;
  f->state = State::exited;
  --b.live;
  if (b.first_exited < 0) b.first_exited = static_cast<int>(f->linear);
  Warp& w = b.warps[f->warp];
  w.exited |= 1u << f->lane;
  if (b.at_barrier > 0) {
    b.error = std::make_exception_ptr(std::runtime_error(
        str(b.barrier_site) + ": simt: barrier divergence: " + b.where(*f) + " exited while " +
        std::to_string(b.at_barrier) + " thread(s) wait at __syncthreads here"));
    return;
  }
  for (unsigned l = 0; l < 32; ++l) {
    if (!(w.waiting >> l & 1u)) continue;
    const Fiber& g = b.lane(f->warp, l);
    if (g.mask >> f->lane & 1u) {
      b.error = std::make_exception_ptr(std::runtime_error(
          str(g.site) + ": simt: " + op_name(g.kind) + " with mask " + hex(g.mask) + " by " + b.where(g) +
          " waits for lane " + std::to_string(f->lane) + ", which exited"));
      return;
    }
  }
}

void fiber_main(bctx::transfer_t t) {
  auto* f = static_cast<Fiber*>(t.data);
  Block* b;
  const detail::LaunchSpec* spec;
  {
    RuntimeSection rs;
    b = f->blk;
    b->sched = t.fctx;
    fiber_arrived(f);
    spec = b->spec;
  }
  try {
    spec->invoke(spec->packed);
  } catch (...) {
    RuntimeSection rs;
    if (!b->error) b->error = std::current_exception();
  }
  bctx::fcontext_t sched;
  {
    RuntimeSection rs;
    if (!b->error) on_exit(f);
    else f->state = State::exited;
    sched = b->sched;
  }
  fiber_leaving(f, true);  // after the section: TSan's ignore count is per fiber
  bctx::jump_fcontext(sched, nullptr);  // never resumed: the stack is reused or unmapped
  __builtin_unreachable();
}

// Release the warp operation of the lanes in `mask` (all of them are waiting at one).
void complete_warp_op(Block& b, unsigned warp, unsigned mask, Fiber* self) {
  Warp& w = b.warps[warp];
  const Fiber& first = *self;
  for (unsigned l = 0; l < 32; ++l) {
    if (!(mask >> l & 1u)) continue;
    const Fiber& g = b.lane(warp, l);
    if (g.kind != first.kind) {
      fail(first.site, std::string("lanes of warp ") + std::to_string(warp) + " of block " +
                           str(b.coords.block_idx) + " meet at different warp operations: " +
                           op_name(first.kind) + " here and " + op_name(g.kind) + " at " + str(g.site));
    }
  }
  unsigned parity = 0;
  for (unsigned l = 0; l < 32; ++l) {
    if (mask >> l & 1u) parity |= (b.lane(warp, l).warp_ops & 1u) << l;
  }
  unsigned ballot = 0;
  if (first.kind == WarpKind::ballot) {
    for (unsigned l = 0; l < 32; ++l) {
      if ((mask >> l & 1u) && b.lane(warp, l).value != 0) ballot |= 1u << l;
    }
  }
  for (unsigned l = 0; l < 32; ++l) {
    if (!(mask >> l & 1u)) continue;
    Fiber& g = b.lane(warp, l);
    const unsigned width = static_cast<unsigned>(g.width);
    const unsigned in_seg = l & (width - 1u);
    const unsigned seg = l - in_seg;
    unsigned src = l;
    switch (g.kind) {
      case WarpKind::sync: g.result = 0; break;
      case WarpKind::ballot: g.result = ballot; break;
      case WarpKind::shfl_idx: src = seg + (static_cast<unsigned>(g.param) & (width - 1u)); break;
      case WarpKind::shfl_up:
        src = in_seg < static_cast<unsigned>(g.param) ? l : l - static_cast<unsigned>(g.param);
        break;
      case WarpKind::shfl_down:
        src = in_seg + static_cast<unsigned>(g.param) >= width ? l : l + static_cast<unsigned>(g.param);
        break;
      case WarpKind::shfl_xor:
        src = l ^ static_cast<unsigned>(g.param);
        if (src >= seg + width) src = l;  // later groups read their own value (CUDA's rule)
        break;
    }
    if (g.kind != WarpKind::sync && g.kind != WarpKind::ballot) {
      // Reading a lane outside the mask is undefined on a GPU: poison it (NaN for floats).
      g.result = src == l ? g.value : ((mask >> src & 1u) ? b.lane(warp, src).value : ~std::uint64_t{0});
    }
    g.peer_mask = mask;
    g.peer_parity = parity;
    if (&g != self) g.state = State::runnable;
  }
  w.waiting &= ~mask;
}

// ---- random schedules ----------------------------------------------------------------------

std::uint64_t splitmix64(std::uint64_t& s) {
  std::uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// ---- a block -------------------------------------------------------------------------------

std::string describe_deadlock(Block& b) {
  // Group the waiting threads by what they wait at.
  std::map<std::tuple<int, std::string, int, unsigned>, std::pair<unsigned, unsigned>> groups;
  for (unsigned i = 0; i < b.n; ++i) {
    const Fiber& f = b.fibers[i];
    if (f.state == State::at_barrier) {
      auto& g = groups[{0, str(b.barrier_site), 0, 0u}];
      if (g.first++ == 0) g.second = i;
    } else if (f.state == State::at_warp) {
      auto& g = groups[{1, str(f.site), static_cast<int>(f.kind), f.mask}];
      if (g.first++ == 0) g.second = i;
    }
  }
  std::string msg = "simt: deadlock in block " + str(b.coords.block_idx) + ":";
  for (const auto& [key, val] : groups) {
    const auto& [what, site, kind, mask] = key;
    msg += " " + std::to_string(val.first) + " thread(s) wait at " +
           (what == 0 ? std::string("__syncthreads") : std::string(op_name(static_cast<WarpKind>(kind))) +
                                                           " with mask " + hex(mask)) +
           " (" + site + "), e.g. thread " + str(b.fibers[val.second].thread_idx) + ";";
  }
  if (b.first_exited >= 0) {
    msg += " " + std::to_string(b.n - b.live) + " thread(s) have exited, e.g. thread " +
           str(b.fibers[b.first_exited].thread_idx) + ";";
  }
  msg.pop_back();
  return msg;
}

void run_block(const detail::LaunchSpec& spec, const Options& opt, dim3 block_idx, std::uint64_t block_linear,
               WorkerCache& c, std::uint64_t& resumes, std::uint64_t& rounds) {
  const unsigned n = spec.block.x * spec.block.y * spec.block.z;
  if (c.stack_bytes != opt.stack_bytes) {
    for (Stack& s : c.stacks) munmap(s.base, s.total);
    c.stacks.clear();
    c.stack_bytes = opt.stack_bytes;
  }
  while (c.stacks.size() < n) c.stacks.push_back(map_stack(opt.stack_bytes));
  if (c.fibers.size() < n) c.fibers.resize(n);
  if (c.order.size() < n) c.order.resize(n);
  if (spec.smem_bytes > c.smem_cap) {
#if defined(SIMT_ASAN)
    if (c.smem != nullptr) __asan_unpoison_memory_region(c.smem, c.smem_cap);
#endif
    std::free(c.smem);
    c.smem_cap = (spec.smem_bytes + 63) / 64 * 64;
    c.smem = static_cast<unsigned char*>(std::aligned_alloc(64, c.smem_cap));
    if (c.smem == nullptr) throw std::bad_alloc();
  }
#if defined(SIMT_ASAN)
  // The buffer may be larger than this launch asked for: make the rest an overflow. Unpoison
  // before the fill: a launch asking for more than the previous one would otherwise write into
  // the part that launch left poisoned.
  if (c.smem != nullptr) {
    __asan_unpoison_memory_region(c.smem, c.smem_cap);
    __asan_poison_memory_region(c.smem + spec.smem_bytes, c.smem_cap - spec.smem_bytes);
  }
#endif
  if (spec.smem_bytes > 0) std::memset(c.smem, 0xFF, spec.smem_bytes);

  RuntimeSection rs;
  Block b;
  b.coords = {block_idx, spec.block, spec.grid};
#if defined(SIMT_TSAN)
  b.tsan_sched = __tsan_get_current_fiber();
#endif
  b.spec = &spec;
  b.fibers = c.fibers.data();
  b.n = n;
  b.live = n;
  b.smem = c.smem;
  b.warps.assign((n + 31) / 32, Warp{});
  for (unsigned i = 0; i < n; ++i) {
    Fiber& f = c.fibers[i];
    void* const tsan_fiber = f.tsan_fiber;
    f = Fiber{};
#if defined(SIMT_TSAN)
    f.tsan_fiber = tsan_fiber != nullptr ? tsan_fiber : __tsan_create_fiber(0);
#else
    (void)tsan_fiber;
#endif
    f.thread_idx = dim3(i % spec.block.x, (i / spec.block.x) % spec.block.y, i / (spec.block.x * spec.block.y));
    f.block = &b.coords;
    f.blk = &b;
    f.linear = i;
    f.warp = i / 32;
    f.lane = i % 32;
    // Stack tops at one offset within a page all fall into the same few L1 sets; staggering
    // them by a cache line per fiber ("colouring") keeps the hot frames from evicting each other.
    const std::size_t colour = (i % 64) * 64 + (i / 64 % 4) * 4096;
    f.stack_size = c.stacks[i].usable() - colour;
    f.stack_lo = static_cast<char*>(c.stacks[i].top()) - colour - f.stack_size;
    f.ctx = bctx::make_fcontext(static_cast<char*>(c.stacks[i].top()) - colour, f.stack_size, &fiber_main);
    b.warps[f.warp].existing |= 1u << f.lane;
  }

  std::uint64_t rng = opt.seed * 0xD1B54A32D192ED03ull ^ (block_linear + 1) * 0x9E3779B97F4A7C15ull;
  // When the block ends, normally or not, the host must see every thread's writes.
  struct JoinFibers {
    Block& b;
    ~JoinFibers() {
#if defined(SIMT_TSAN)
      void* const sched = __tsan_get_current_fiber();
      for (unsigned i = 0; i < b.n; ++i) {
        if (!b.fibers[i].started) continue;
        Fiber& f = b.fibers[i];
        __tsan_switch_to_fiber(f.tsan_fiber, 0);  // no stack switch: only the clocks
        // A fiber abandoned after an error is suspended inside one RuntimeSection: close it,
        // or its TSan context (reused by later blocks) would ignore every access from now on.
        if (f.state != State::exited) AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
        __tsan_switch_to_fiber(sched, 0);
      }
#endif
    }
  } join{b};
  unsigned* order = c.order.data();
  while (b.live > 0) {
    for (unsigned i = 0; i < n; ++i) order[i] = opt.schedule == Schedule::reversed ? n - 1 - i : i;
    if (opt.schedule == Schedule::random) {
      for (unsigned i = n - 1; i > 0; --i) {
        const unsigned j = static_cast<unsigned>(splitmix64(rng) % (i + 1));
        std::swap(order[i], order[j]);
      }
    }
    unsigned resumed = 0;
    for (unsigned k = 0; k < n; ++k) {
      Fiber& f = b.fibers[order[k]];
      if (f.state != State::runnable) continue;
      resume(b, f);
      ++resumed;
      if (b.error) {
        resumes += b.resumes;
        std::rethrow_exception(b.error);  // the other fibers are abandoned mid-kernel
      }
    }
    ++b.rounds;
    if (resumed == 0) throw std::runtime_error(str(spec.site) + ": " + describe_deadlock(b));
  }
  resumes += b.resumes;
  rounds += b.rounds;
}

// ---- workers -------------------------------------------------------------------------------

struct Job {
  const detail::LaunchSpec* spec = nullptr;
  Options opt;
  std::uint64_t nblocks = 0;
  std::atomic<std::uint64_t> next{0};
  std::atomic<bool> failed{false};
  std::atomic<std::uint64_t> resumes{0}, rounds{0};
  std::atomic<int> participants{0};
  std::mutex m;
  std::condition_variable cv;
  int helpers_pending = 0;
  std::exception_ptr error;

  void participate() {
    WorkerCache& c = t_cache;
    std::uint64_t my_resumes = 0, my_rounds = 0;
    bool counted = false;
    while (!failed.load(std::memory_order_relaxed)) {
      const std::uint64_t i = next.fetch_add(1);
      if (i >= nblocks) break;
      if (!counted) {
        participants.fetch_add(1);
        counted = true;
      }
      const dim3 g = spec->grid;
      const dim3 idx(static_cast<unsigned>(i % g.x), static_cast<unsigned>(i / g.x % g.y),
                     static_cast<unsigned>(i / (std::uint64_t{g.x} * g.y)));
      try {
        run_block(*spec, opt, idx, i, c, my_resumes, my_rounds);
      } catch (...) {
        std::lock_guard<std::mutex> lock(m);
        if (!error) error = std::current_exception();
        failed = true;
      }
    }
    resumes += my_resumes;
    rounds += my_rounds;
  }
};

class Pool {
 public:
  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(m_);
      stop_ = true;
    }
    cv_.notify_all();
    for (std::thread& t : threads_) t.join();
  }

  // Runs the job on the calling thread and up to `helpers` pool threads.
  void run(Job& job, int helpers) {
    {
      std::lock_guard<std::mutex> lock(m_);
      while (static_cast<int>(threads_.size()) < helpers) threads_.emplace_back([this] { loop(); });
      for (int i = 0; i < helpers; ++i) tasks_.push_back(&job);
      job.helpers_pending = helpers;
    }
    if (helpers > 0) cv_.notify_all();
    job.participate();
    int removed = 0;
    {
      // Helpers busy elsewhere have not taken their task yet: the blocks are done, drop it.
      std::lock_guard<std::mutex> lock(m_);
      for (auto it = tasks_.begin(); it != tasks_.end();) {
        if (*it == &job) {
          it = tasks_.erase(it);
          ++removed;
        } else {
          ++it;
        }
      }
    }
    std::unique_lock<std::mutex> lock(job.m);
    job.helpers_pending -= removed;
    job.cv.wait(lock, [&] { return job.helpers_pending == 0; });
  }

 private:
  void loop() {
    for (;;) {
      Job* job = nullptr;
      {
        std::unique_lock<std::mutex> lock(m_);
        cv_.wait(lock, [&] { return stop_ || !tasks_.empty(); });
        if (stop_) return;
        job = tasks_.front();
        tasks_.pop_front();
      }
      job->participate();
      std::lock_guard<std::mutex> lock(job->m);
      if (--job->helpers_pending == 0) job->cv.notify_all();
    }
  }

  std::mutex m_;
  std::condition_variable cv_;
  std::deque<Job*> tasks_;
  std::vector<std::thread> threads_;
  bool stop_ = false;
};

Pool& pool() {
  static Pool p;
  return p;
}

int default_workers() {
  if (const char* s = std::getenv("SIMT_WORKERS")) {
    const int n = std::atoi(s);
    if (n > 0) return n;
  }
  const unsigned h = std::thread::hardware_concurrency();
  return h > 0 ? static_cast<int>(h) : 1;
}

void check_config(const detail::LaunchSpec& s, const Options& opt) {
  const dim3 b = s.block, g = s.grid;
  if (b.x == 0 || b.y == 0 || b.z == 0 || g.x == 0 || g.y == 0 || g.z == 0) {
    fail(s.site, "launch: grid " + str(g) + " and block " + str(b) + " must have no zero extent");
  }
  const std::uint64_t threads = std::uint64_t{b.x} * b.y * b.z;
  if (threads > 1024 || b.x > 1024 || b.y > 1024 || b.z > 64) {
    fail(s.site, "launch: block " + str(b) + " has " + std::to_string(threads) +
                     " threads; CUDA allows at most 1024 per block (x, y <= 1024, z <= 64)");
  }
  if (g.x > 2147483647u || g.y > 65535u || g.z > 65535u) {
    fail(s.site, "launch: grid " + str(g) + " exceeds CUDA's limits (x < 2^31, y and z <= 65535)");
  }
  if (s.smem_bytes > opt.max_dynamic_shared_bytes) {
    fail(s.site, "launch: " + std::to_string(s.smem_bytes) + " bytes of dynamic shared memory requested, " +
                     "more than the " + std::to_string(opt.max_dynamic_shared_bytes) +
                     " allowed (CUDA's default is 48 KiB; a kernel that opts in with cudaFuncSetAttribute "
                     "raises simt::Options::max_dynamic_shared_bytes too)");
  }
  if (detail::t_fiber != nullptr) {
    fail(s.site, "launch from inside a kernel (dynamic parallelism) is not supported");
  }
}

}  // namespace

const char* schedule_name(Schedule s) {
  switch (s) {
    case Schedule::forward: return "forward";
    case Schedule::reversed: return "reversed";
    case Schedule::random: return "random";
  }
  return "?";
}

Options options() {
  std::lock_guard<std::mutex> lock(g_options_mutex);
  return g_options;
}

void set_options(const Options& o) {
  if (o.stack_bytes < 16 * 1024) throw std::invalid_argument("simt::set_options: stack_bytes must be at least 16 KiB");
  if (o.workers < 0) throw std::invalid_argument("simt::set_options: workers must be >= 0 (0 = default)");
  std::lock_guard<std::mutex> lock(g_options_mutex);
  g_options = o;
}

void set_schedule(Schedule s, std::uint64_t seed) {
  std::lock_guard<std::mutex> lock(g_options_mutex);
  g_options.schedule = s;
  g_options.seed = seed;
}

LaunchStats last_launch_stats() { return t_last_stats; }

namespace {

[[noreturn, gnu::cold, gnu::noinline]] void fail_barrier(Site site, Block& b, const Fiber& f) {
  if (b.first_exited >= 0) {
    fail(site, "barrier divergence: " + b.where(f) + " waits at __syncthreads but thread " +
                   str(b.fibers[b.first_exited].thread_idx) + " has exited");
  }
  fail(site, "barrier divergence: " + b.where(f) + " waits at __syncthreads here while " +
                 std::to_string(b.at_barrier) + " thread(s) wait at the one at " + str(b.barrier_site));
}

[[noreturn, gnu::cold, gnu::noinline]] void fail_warp(Site site, WarpKind kind, unsigned mask, int width, Block& b,
                                                      const Fiber& f) {
  const Warp& w = b.warps[f.warp];
  const std::string op = std::string(op_name(kind));
  if (!(mask >> f.lane & 1u)) {
    fail(site, op + " by " + b.where(f) + " (lane " + std::to_string(f.lane) + ") with mask " + hex(mask) +
                   ", which does not name the calling lane");
  }
  if (mask & ~w.existing) {
    fail(site, op + " with mask " + hex(mask) + " by " + b.where(f) + " names lanes " + hex(mask & ~w.existing) +
                   " that do not exist (a block of " + std::to_string(b.n) + " threads: its last warp is partial)");
  }
  if (mask & w.exited) {
    fail(site, op + " with mask " + hex(mask) + " by " + b.where(f) + " names lanes " + hex(mask & w.exited) +
                   ", which have exited");
  }
  fail(site, op + ": width " + std::to_string(width) + " is not a power of 2 in [1, 32]");
}

}  // namespace

namespace detail {

int barrier(Site site, BarrierKind kind, int pred) {
  RuntimeSection rs;
  Fiber* f = current(site, "__syncthreads");
  Block& b = *f->blk;
  if (__builtin_expect(b.first_exited >= 0 || (b.at_barrier > 0 && !same_site(site, b.barrier_site)), 0)) {
    fail_barrier(site, b, *f);
  }
  if (b.at_barrier == 0) {
    b.barrier_site = site;
    b.barrier_kind = kind;
    b.barrier_true = 0;
  }
  const unsigned gen = b.barrier_gen;
  tsan_release(&b.barrier_sync[gen & 1u]);
  f->state = State::at_barrier;
  ++b.at_barrier;
  if (pred != 0) ++b.barrier_true;
  if (b.at_barrier == b.n) {
    switch (b.barrier_kind) {
      case BarrierKind::plain: b.barrier_result = 0; break;
      case BarrierKind::count: b.barrier_result = static_cast<int>(b.barrier_true); break;
      case BarrierKind::all: b.barrier_result = b.barrier_true == b.n; break;
      case BarrierKind::any: b.barrier_result = b.barrier_true > 0; break;
    }
    for (unsigned i = 0; i < b.n; ++i) b.fibers[i].state = State::runnable;
    b.at_barrier = 0;
    ++b.barrier_gen;
  }
  // The last thread to arrive yields too, so that the next phase starts in the schedule's
  // order (running it on at once would put it first in every order).
  suspend(f);
  tsan_acquire(&b.barrier_sync[gen & 1u]);
  return b.barrier_result;
}

std::uint64_t warp_op(Site site, WarpKind kind, unsigned mask, std::uint64_t value, int param, int width) {
  RuntimeSection rs;
  Fiber* f = current(site, op_name(kind));
  Block& b = *f->blk;
  Warp& w = b.warps[f->warp];
  const unsigned me = 1u << f->lane;
  if (__builtin_expect(!(mask & me) || (mask & ~w.existing) || (mask & w.exited) || width < 1 || width > 32 ||
                           (width & (width - 1)) != 0,
                       0)) {
    fail_warp(site, kind, mask, width, b, *f);
  }
  f->kind = kind;
  f->mask = mask;
  f->value = value;
  f->param = param;
  f->width = width;
  f->site = site;
  ++f->warp_ops;
  tsan_release(&f->lane_sync[f->warp_ops & 1u]);
  f->state = State::at_warp;
  w.waiting |= me;
  bool complete = (w.waiting & mask) == mask;
  for (unsigned l = 0; complete && l < 32; ++l) {
    if ((mask >> l & 1u) && b.lane(f->warp, l).mask != mask) complete = false;
  }
  if (complete) {
    complete_warp_op(b, f->warp, mask, f);
    f->state = State::runnable;
  }
  suspend(f);  // the completing lane yields too: see barrier()
  for (unsigned l = 0; l < 32; ++l) {
    if (f->peer_mask >> l & 1u) tsan_acquire(&b.lane(f->warp, l).lane_sync[f->peer_parity >> l & 1u]);
  }
  return f->result;
}

unsigned active_mask() {
  Fiber* f = current({"(unknown)", 0}, "__activemask");
  const Warp& w = f->blk->warps[f->warp];
  return w.existing & ~w.exited;
}

void* dynamic_shared() {
  Fiber* f = current({"(unknown)", 0}, "SIMT_DYNAMIC_SHARED");
  return f->blk->smem;
}

void run(const LaunchSpec& spec) {
  const Options opt = options();
  check_config(spec, opt);
  Job job;
  job.spec = &spec;
  job.opt = opt;
  job.nblocks = std::uint64_t{spec.grid.x} * spec.grid.y * spec.grid.z;
  const int workers = opt.workers > 0 ? opt.workers : default_workers();
  const int helpers = static_cast<int>(std::min<std::uint64_t>(job.nblocks, static_cast<std::uint64_t>(workers))) - 1;
  pool().run(job, helpers);
  t_last_stats = LaunchStats{job.nblocks, job.resumes.load(), job.rounds.load(), job.participants.load()};
  if (job.error) std::rethrow_exception(job.error);
}

}  // namespace detail
}  // namespace simt
