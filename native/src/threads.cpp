// The process-wide thread pool behind RunOnThreads, and so behind every ParallelFor; see
// lookalike/kernels.h. On its own: it knows nothing of the kernels, they only hand it a body to run.
#include "lookalike/kernels.h"

#include <condition_variable>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

namespace lookalike {
namespace {

// Workers that outlive the calls: starting a thread costs tens of microseconds here, a few percent
// of a 3 ms top_k_shared, twice per call. One call at a time uses the pool (the caller holds `busy_`).
class ThreadPool {
 public:
  using Body = void (*)(void* context, int thread_id);

  explicit ThreadPool(long owner) : owner_(owner) {}
  long owner() const { return owner_; }

  // Runs body on this thread (0) and threads - 1 workers; false, having run nothing, if another call
  // holds the pool.
  bool TryRun(int threads, Body body, void* context) {
    std::unique_lock<std::mutex> hold(busy_, std::try_to_lock);
    if (!hold.owns_lock()) return false;
    int helpers;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      while (started_ < threads - 1) {
        try {
          std::thread(&ThreadPool::Work, this, started_ + 1, generation_).detach();
        } catch (...) {  // could not start one: run with those there are
          break;
        }
        ++started_;
      }
      helpers = std::min(threads - 1, started_);
      body_ = body;
      context_ = context;
      wanted_ = helpers;
      pending_ = helpers;
      ++generation_;
    }
    if (helpers > 0) wake_.notify_all();
    body(context, 0);
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return pending_ == 0; });
    return true;
  }

 private:
  // Worker `id` (1, 2, ...) runs every call that wants it, starting with the one after `seen`.
  void Work(int id, uint64_t seen) {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      if (id > wanted_) continue;
      const Body body = body_;
      void* const context = context_;
      lock.unlock();
      body(context, id);
      lock.lock();
      if (--pending_ == 0) done_.notify_one();
    }
  }

  const long owner_;  // the process that started the workers (a forked child has none of them)
  std::mutex busy_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  int started_ = 0;
  uint64_t generation_ = 0;
  Body body_ = nullptr;
  void* context_ = nullptr;
  int wanted_ = 0;
  int pending_ = 0;
};

long ProcessId() {
#if defined(__unix__) || defined(__APPLE__)
  return static_cast<long>(getpid());
#else
  return 0;
#endif
}

// This process's pool. Never destroyed: its workers sleep until the process ends. After a fork the
// child starts its own (the parent's workers do not exist there) and leaves the old one be.
ThreadPool& Pool() {
  static std::atomic<ThreadPool*> current{nullptr};
  const long pid = ProcessId();
  ThreadPool* pool = current.load(std::memory_order_acquire);
  while (pool == nullptr || pool->owner() != pid) {
    ThreadPool* fresh = new ThreadPool(pid);
    if (current.compare_exchange_strong(pool, fresh, std::memory_order_acq_rel)) return *fresh;
    delete fresh;  // another thread installed one first: `pool` now holds it
  }
  return *pool;
}

}  // namespace

void RunOnThreads(int threads, void (*body)(void* context, int thread_id), void* context) {
  if (threads <= 1) {
    body(context, 0);
    return;
  }
  if (Pool().TryRun(threads, body, context)) return;
  // The pool is busy with another call: threads of our own, as many as start.
  std::vector<std::thread> helpers;
  helpers.reserve(threads - 1);
  for (int t = 1; t < threads; ++t) {
    try {
      helpers.emplace_back(body, context, t);
    } catch (...) {
      break;
    }
  }
  body(context, 0);
  for (auto& helper : helpers) helper.join();
}

}  // namespace lookalike
