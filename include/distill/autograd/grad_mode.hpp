// Thread-local autograd switches: grad mode (NoGradGuard) and the opt-in non-finite check.
#pragma once

namespace distill::autograd {

namespace detail {
inline bool& grad_mode_flag() {
  thread_local bool enabled = true;
  return enabled;
}
inline bool& anomaly_flag() {
  thread_local bool enabled = false;
  return enabled;
}
}  // namespace detail

inline bool grad_enabled() { return detail::grad_mode_flag(); }

// While alive, ops record nothing and their results never require gradients.
class NoGradGuard {
 public:
  NoGradGuard() : prev_(detail::grad_mode_flag()) { detail::grad_mode_flag() = false; }
  ~NoGradGuard() { detail::grad_mode_flag() = prev_; }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};

// Re-enables recording inside a no-grad region (used by activation checkpointing's recompute).
class EnableGradGuard {
 public:
  EnableGradGuard() : prev_(detail::grad_mode_flag()) { detail::grad_mode_flag() = true; }
  ~EnableGradGuard() { detail::grad_mode_flag() = prev_; }
  EnableGradGuard(const EnableGradGuard&) = delete;
  EnableGradGuard& operator=(const EnableGradGuard&) = delete;

 private:
  bool prev_;
};

// Opt-in: after each op's backward, check the gradients it produced and throw distill::Error naming the
// op when one holds NaN or Inf.
inline void set_detect_nonfinite(bool on) { detail::anomaly_flag() = on; }
inline bool detect_nonfinite() { return detail::anomaly_flag(); }

}  // namespace distill::autograd
