// Output tensors of swalp::quantize on CPU (see quantize.cpp).
//
// Outputs of 4 MiB and more live in 2 MiB-aligned mappings advised to use transparent
// huge pages, and freed ones are kept for reuse, up to POOL bytes. Why: a fresh output
// is faulted in and zeroed by the kernel on first write, which costs about as much as
// quantizing it; glibc keeps freed blocks below 32 MiB for reuse but unmaps larger ones,
// so every large output would pay that again. Reuse makes the steady state (the same
// shapes every training step) cost only the kernel. Smaller outputs, and every output
// off Linux, come from torch's CPU allocator. The pool's cap can be lowered (to 0: no pool)
// where memory matters more than speed: swalp.ops.cpu.set_output_pool (packed storage does).

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <c10/core/CPUAllocator.h>
#include <torch/library.h>

#include <cstdint>
#include <mutex>
#include <vector>
#ifdef __linux__
#include <sys/mman.h>
#endif

namespace swalp {
namespace {

#ifdef __linux__
class HugePageAllocator final : public at::Allocator {
 public:
  static constexpr size_t HUGE = size_t(2) << 20, MIN = size_t(4) << 20, POOL = size_t(256) << 20;

  // Sets the pool's cap (bytes) and unmaps what is cached beyond it; returns {old cap, cached}.
  std::vector<int64_t> set_pool(int64_t cap) {
    std::vector<Mapping*> drop;
    int64_t old;
    {
      std::lock_guard<std::mutex> g(mu_);
      old = static_cast<int64_t>(pool_);
      if (cap >= 0) pool_ = static_cast<size_t>(cap);
      while (cached_ > pool_ && !free_.empty()) {
        drop.push_back(free_.back());
        cached_ -= free_.back()->cap;
        free_.pop_back();
      }
    }
    for (Mapping* m : drop) {
      munmap(m->base, m->len);
      delete m;
    }
    return {old, static_cast<int64_t>(cached_)};
  }

  at::DataPtr allocate(size_t n) override {
    if (n < MIN) return c10::GetCPUAllocator()->allocate(n);
    const size_t need = (n + HUGE - 1) / HUGE * HUGE;
    Mapping* m = take(need);
    if (!m) {
      const size_t len = need + HUGE;  // room to align to 2 MiB
      void* base = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (base == MAP_FAILED) return c10::GetCPUAllocator()->allocate(n);
      void* p = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(base) + HUGE - 1) & ~(HUGE - 1));
      madvise(p, need, MADV_HUGEPAGE);  // advice only: without THP this changes nothing
      m = new Mapping{base, len, p, need};
    }
    return {m->p, m, &release, at::Device(at::kCPU)};
  }
  at::DeleterFnPtr raw_deleter() const override { return nullptr; }
  void copy_data(void* dest, const void* src, size_t count) const override { default_copy_data(dest, src, count); }

  static HugePageAllocator& get() {
    static auto* a = new HugePageAllocator;  // never destroyed: outputs may outlive static destructors
    return *a;
  }

 private:
  struct Mapping {
    void* base;
    size_t len;
    void* p;
    size_t cap;
  };
  std::mutex mu_;
  std::vector<Mapping*> free_;
  size_t cached_ = 0;
  size_t pool_ = POOL;

  Mapping* take(size_t need) {  // the smallest free mapping that fits, not over twice too big
    std::lock_guard<std::mutex> g(mu_);
    auto best = free_.end();
    for (auto it = free_.begin(); it != free_.end(); ++it)
      if ((*it)->cap >= need && (*it)->cap <= 2 * need && (best == free_.end() || (*it)->cap < (*best)->cap)) best = it;
    if (best == free_.end()) return nullptr;
    Mapping* m = *best;
    free_.erase(best);
    cached_ -= m->cap;
    return m;
  }
  static void release(void* ctx) {
    auto* m = static_cast<Mapping*>(ctx);
    HugePageAllocator& a = get();
    {
      std::lock_guard<std::mutex> g(a.mu_);
      if (a.cached_ + m->cap <= a.pool_) {
        a.free_.push_back(m);
        a.cached_ += m->cap;
        return;
      }
    }
    munmap(m->base, m->len);
    delete m;
  }
};

}  // namespace

at::Tensor empty_output(at::IntArrayRef sizes, at::ScalarType dtype) {
  return at::detail::empty_generic(sizes, &HugePageAllocator::get(), c10::DispatchKeySet(c10::DispatchKey::CPU), dtype,
                                   at::MemoryFormat::Contiguous);
}

std::vector<int64_t> output_pool(int64_t cap) { return HugePageAllocator::get().set_pool(cap); }
#else
}  // namespace

at::Tensor empty_output(at::IntArrayRef sizes, at::ScalarType dtype) { return at::empty(sizes, at::dtype(dtype)); }

std::vector<int64_t> output_pool(int64_t cap) { return {0, 0}; }  // no pool here
#endif

at::Tensor empty_output(const at::Tensor& x) { return empty_output(x.sizes(), x.scalar_type()); }

}  // namespace swalp

// Not in _schema.py: a setting of this backend, not an op of the method.
TORCH_LIBRARY_FRAGMENT(swalp_cpu, m) { m.def("output_pool(int cap) -> int[]", &swalp::output_pool); }
