// Var<T, Device>: a tensor value, its gradient, and its place on the tape.
//
// The tape: every recorded op is a Node holding its parents and a backward function; nodes are numbered
// in creation order, so walking the reachable nodes from the newest to the oldest is a valid reverse
// topological order. backward() does exactly that. Contracts:
//  - backward functions ACCUMULATE into parents' gradients (+=), never overwrite: a value used twice
//    gets the sum, and gradients add up across backward() calls until zero_grad();
//  - gradients of intermediate (non-leaf) nodes are freed once consumed unless retain_grad() was called;
//  - frozen Vars (requires_grad = false) never get a gradient, but gradients still flow through the ops
//    that use them to their other inputs.
#pragma once
#include <algorithm>
#include <atomic>
#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <unordered_set>
#include <vector>

#include "distill/autograd/grad_mode.hpp"
#include "distill/expr/eval.hpp"

namespace distill::autograd {

// dst += src (same shape; dst contiguous). The one accumulation primitive backward functions use.
// On Cuda it is a precompiled kernel (kernels/elementwise.cu), so host-compiled code can run backward.
template <class T, class D>
void accumulate(const Tensor<T, D>& dst, const Tensor<T, D>& src) {
  check_same_shape(dst.shape(), src.shape(), "accumulate");
  if constexpr (std::is_same_v<D, Cpu>) {
    expr::assign(dst, expr::make_node(dst) + expr::make_node(src));
  } else {
    DISTILL_CHECK(dst.is_contiguous(), "accumulate: the destination (a gradient buffer) must be contiguous");
    const Tensor<T, D> s = src.contiguous();
    cuda::add_into(dst.data(), s.data(), dst.numel());
  }
}

inline uint64_t next_seq() {
  static std::atomic<uint64_t> counter{0};
  return ++counter;
}

struct Node {
  uint64_t seq = next_seq();
  bool requires_grad = false;
  bool retain = false;
  const char* op = "leaf";
  std::vector<std::shared_ptr<Node>> parents;
  std::function<void(Node&)> backward_fn;

  // Frees long chains iteratively: releasing a 10^6-node graph recursively would overflow the stack.
  // Parents are held both in `parents` and inside backward closures; dropping the closure while the
  // work list still holds the parents keeps every destructor shallow.
  virtual ~Node() {
    std::vector<std::shared_ptr<Node>> work = std::move(parents);
    backward_fn = nullptr;
    while (!work.empty()) {
      std::shared_ptr<Node> p = std::move(work.back());
      work.pop_back();
      if (p.use_count() == 1) {
        for (auto& q : p->parents) work.push_back(std::move(q));
        p->parents.clear();
        p->backward_fn = nullptr;
      }
    }
  }
  bool is_leaf() const { return !backward_fn; }
  virtual bool has_grad() const = 0;
  virtual bool grad_all_finite() const = 0;
  virtual void release_grad() = 0;
  // Moves the gradient out (type-erased) / adds a moved-out gradient back.
  virtual std::shared_ptr<void> stash_grad() = 0;
  virtual void restore_grad(const std::shared_ptr<void>& g) = 0;
  virtual std::string describe() const = 0;
};

template <class T, class D>
struct TypedNode final : Node {
  Tensor<T, D> value;
  Tensor<T, D> grad;

  // The gradient buffer, created as zeros on first use.
  Tensor<T, D>& grad_buffer() {
    if (!grad.defined()) grad = Tensor<T, D>::zeros(value.shape());
    return grad;
  }
  bool has_grad() const override { return grad.defined(); }
  bool grad_all_finite() const override {
    const auto h = grad.template to<Cpu>();  // the same tensor on Cpu; a host copy from a device
    for (int64_t i = 0; i < h.numel(); ++i)
      if (!std::isfinite(static_cast<double>(to_compute<T>(h.data()[i])))) return false;
    return true;
  }
  void release_grad() override { grad = Tensor<T, D>(); }
  std::shared_ptr<void> stash_grad() override {
    auto p = std::make_shared<Tensor<T, D>>(std::move(grad));
    grad = Tensor<T, D>();
    return p;
  }
  void restore_grad(const std::shared_ptr<void>& p) override {
    const auto& g = *static_cast<const Tensor<T, D>*>(p.get());
    if (grad.defined())
      accumulate(grad, g);
    else
      grad = g;
  }
  std::string describe() const override {
    return std::string(dtype_name_v<T>) + value.shape().str() + " on " + D::name;
  }
};

// Runs one backward pass from `root`: `seed(root)` writes the upstream gradient into root's (empty)
// gradient buffer, then every reachable node's backward runs, newest first. Each pass propagates only
// its own gradient: a non-leaf node still holding a gradient from an earlier pass (retain_grad) has it
// set aside first and added back afterwards, so nothing is sent down twice. Non-leaf gradients are
// released at the end of the pass (also when it throws) unless retained; leaf gradients accumulate.
inline void run_backward(const std::shared_ptr<Node>& root, const std::function<void(Node&)>& seed) {
  std::vector<Node*> order;
  std::unordered_set<Node*> seen;
  std::vector<Node*> stack{root.get()};
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    if (!seen.insert(n).second) continue;
    order.push_back(n);
    for (auto& p : n->parents)
      if (p->requires_grad) stack.push_back(p.get());
  }
  std::sort(order.begin(), order.end(), [](Node* a, Node* b) { return a->seq > b->seq; });
  std::vector<std::pair<Node*, std::shared_ptr<void>>> stashed;
  for (Node* n : order)
    if (!n->is_leaf() && n->has_grad()) stashed.emplace_back(n, n->stash_grad());
  auto finish = [&] {
    for (Node* n : order)
      if (!n->is_leaf() && !n->retain) n->release_grad();
    for (auto& [n, g] : stashed) n->restore_grad(g);
  };
  try {
    seed(*root);
    for (Node* n : order) {
      if (n->is_leaf() || !n->has_grad()) continue;
      n->backward_fn(*n);
      if (detect_nonfinite()) {
        for (auto& p : n->parents)
          if (p->requires_grad && p->has_grad() && !p->grad_all_finite())
            throw Error(std::string("non-finite gradient (NaN or Inf) produced by the backward of '") + n->op +
                        "' for its input " + p->describe());
      }
      if (!n->retain) n->release_grad();  // consumed
    }
  } catch (...) {
    finish();
    throw;
  }
  finish();
}

}  // namespace distill::autograd

namespace distill {

template <class T, class D = Cpu>
class Var {
  static_assert(FloatingDtype<T>, "Var holds a floating-point dtype (f32, f64, bf16 or f16)");

 public:
  using value_type = T;
  using device_type = D;
  using node_type = autograd::TypedNode<T, D>;

  Var() = default;
  // A leaf. Its value is made contiguous (views are copied).
  explicit Var(const Tensor<T, D>& value, bool requires_grad = false) : n_(std::make_shared<node_type>()) {
    DISTILL_CHECK(value.defined(), "a Var needs a defined tensor (got an empty Tensor())");
    n_->value = value.contiguous();
    n_->requires_grad = requires_grad;
  }
  // A trainable leaf (requires_grad = true).
  static Var param(const Tensor<T, D>& value) { return Var(value, true); }

  // Evaluate an element-wise expression in one fused pass; when any differentiable input requires a
  // gradient (and grad mode is on) the result is recorded with the derived fused backward.
  template <expr::Expression E>
  requires std::is_same_v<typename E::value_type, T> && std::is_same_v<typename E::device_type, D> Var(const E& e)
      : n_(std::make_shared<node_type>()) {  // NOLINT: implicit by design, `Var y = silu(x);`
    n_->value = eval(e);
    if (autograd::grad_enabled() && e.any_requires_grad()) {
      n_->requires_grad = true;
      n_->op = "elementwise";
      e.collect_nodes(n_->parents);
      n_->backward_fn = [e](autograd::Node& self) { expr::backward_pass(e, static_cast<node_type&>(self).grad); };
    }
  }

  // Records a coarse op: `bw(self)` must accumulate into the parents' gradients from self.grad.
  // With `always`, the result requires grad whenever grad mode is on, even if no listed parent does
  // (activation checkpointing: trainable weights captured inside the recomputed function).
  static Var record(const char* op, Tensor<T, D> value, std::vector<std::shared_ptr<autograd::Node>> parents,
                    std::function<void(node_type&)> bw, bool always = false) {
    Var v(value, false);
    if (!autograd::grad_enabled()) return v;
    bool any = always;
    for (auto& p : parents) any = any || (p && p->requires_grad);
    if (!any) return v;
    std::erase_if(parents, [](const auto& p) { return !p || !p->requires_grad; });
    v.n_->requires_grad = true;
    v.n_->op = op;
    v.n_->parents = std::move(parents);
    v.n_->backward_fn = [bw = std::move(bw)](autograd::Node& self) { bw(static_cast<node_type&>(self)); };
    return v;
  }

  bool defined() const { return n_ != nullptr; }
  const Tensor<T, D>& value() const { return nd().value; }
  const Shape& shape() const { return nd().value.shape(); }
  int64_t dim(int i) const { return nd().value.dim(i); }
  int64_t numel() const { return nd().value.numel(); }
  bool requires_grad() const { return nd().requires_grad; }
  bool is_leaf() const { return nd().is_leaf(); }
  const char* op() const { return nd().op; }
  // Gradient (undefined until some backward() reached this Var).
  const Tensor<T, D>& grad() const { return nd().grad; }
  // The gradient buffer (zeros on first use); backward functions accumulate into it.
  Tensor<T, D>& grad_buffer() const { return nd().grad_buffer(); }
  void zero_grad() const { nd().release_grad(); }
  void retain_grad() const { nd().retain = true; }

  // Frozen leaves never receive gradients or optimizer state.
  void freeze() const {
    DISTILL_CHECK(is_leaf(), "only leaves can be frozen; use a no-grad scope for computed values");
    nd().requires_grad = false;
  }
  void unfreeze() const {
    DISTILL_CHECK(is_leaf(), "only leaves can be made trainable");
    nd().requires_grad = true;
  }
  // A new leaf sharing this value, cut from the tape.
  Var detach() const { return Var(nd().value, false); }

  // Backward from a scalar (one-element) Var, seeding d(self)/d(self) = 1.
  void backward() const {
    DISTILL_CHECK(numel() == 1, "backward() without a seed needs a one-element Var, got ", shape().str(),
                  "; pass a seed gradient of the same shape");
    auto seed = Tensor<T, Cpu>::full(shape(), T(1));
    backward(seed.template to<D>());
  }
  // Backward with an explicit upstream gradient of this Var's shape.
  void backward(const Tensor<T, D>& seed) const {
    check_same_shape(shape(), seed.shape(), "backward seed");
    DISTILL_CHECK(requires_grad(),
                  "backward() on a Var that does not require grad (no trainable input, a frozen "
                  "leaf, or created under NoGradGuard)");
    autograd::run_backward(n_, [&](autograd::Node&) { autograd::accumulate(n_->grad_buffer(), seed.contiguous()); });
  }

  const std::shared_ptr<node_type>& node() const { return n_; }

 private:
  node_type& nd() const {
    DISTILL_CHECK(n_ != nullptr, "use of an undefined (default-constructed) Var");
    return *n_;
  }
  std::shared_ptr<node_type> n_;
};

// Evaluates an element-wise expression into a (recorded) Var; lets coarse ops take expressions.
template <expr::Expression E>
Var<typename E::value_type, typename E::device_type> to_var(const E& e) {
  return Var<typename E::value_type, typename E::device_type>(e);
}

namespace expr {
// A Var inside an expression: reads its value, and in the backward pass accumulates into its gradient
// (when it requires one). Holds the node, so the tape keeps what it saved alive.
template <class T, class D>
struct VarLeaf : StridedLeaf<T, D> {
  using Base = StridedLeaf<T, D>;
  using C = typename Base::C;
  std::shared_ptr<autograd::TypedNode<T, D>> node;
  T* gbase = nullptr;
  T* grow = nullptr;
  // Broadcast leaves accumulate in double (see expr::backward_pass).
  std::shared_ptr<std::vector<double>> scratch, local;
  double* sbase = nullptr;
  double* srow = nullptr;

  explicit VarLeaf(const Var<T, D>& v) : Base(v.value()), node(v.node()) {}
  bool any_requires_grad() const { return node->requires_grad; }
  void collect_nodes(std::vector<std::shared_ptr<autograd::Node>>& out) const {
    if (node->requires_grad) out.push_back(node);
  }
  void prepare_grads(const Shape& out) {
    gbase = node->requires_grad ? node->grad_buffer().data() : nullptr;
    if (!gbase) return;
    Base::bind(out);  // computes bcast for this output shape
    if (this->bcast) {
      scratch = std::make_shared<std::vector<double>>(static_cast<size_t>(node->value.numel()), 0.0);
      sbase = scratch->data();
    }
  }
  void finish_grads() {
    if (!scratch) return;
    for (size_t i = 0; i < scratch->size(); ++i)
      gbase[i] = from_compute<T>(static_cast<C>(static_cast<double>(to_compute<T>(gbase[i])) + (*scratch)[i]));
    scratch.reset();
    local.reset();
    sbase = srow = nullptr;
  }
  // A private zeroed scratch for one chunk of the broadcast backward; merge_scratch adds it into the
  // shared one (in chunk order, for determinism).
  void fork_scratch() {
    if (!scratch) return;
    local = std::make_shared<std::vector<double>>(scratch->size(), 0.0);
    sbase = srow = local->data();
  }
  void merge_scratch(const VarLeaf& o) {
    if (!scratch || !o.local) return;
    for (size_t i = 0; i < scratch->size(); ++i) (*scratch)[i] += (*o.local)[i];
  }
  bool grad_broadcast() const { return gbase && this->bcast; }
  void bind_flat() {
    Base::bind_flat();
    grow = gbase;
    srow = sbase;
  }
  void bind(const Shape& out) {
    Base::bind(out);
    grow = gbase;
    srow = sbase;
  }
  void seek(const int64_t* idx, int R) {
    Base::seek(idx, R);
    grow = gbase ? gbase + (this->row - this->base) : nullptr;  // value and grad share contiguous layout
    srow = sbase ? sbase + (this->row - this->base) : nullptr;
  }
  template <bool U, bool S = false>
  DISTILL_FORCEINLINE void bwd(int64_t j, C, C g) const {
    if constexpr (S) {  // only the serial broadcast pass has scratch buffers; the hot path stays branch-light
      if (srow) {
        srow[U ? j : j * this->step] += static_cast<double>(g);
        return;
      }
    }
    if (!grow) return;
    T& dst = U ? grow[j] : grow[j * this->step];
    dst = from_compute<T>(to_compute<T>(dst) + g);
  }
};

template <class T, class D>
struct leaf_of<Var<T, D>> {
  static VarLeaf<T, D> make(const Var<T, D>& v) { return VarLeaf<T, D>(v); }
};
}  // namespace expr

}  // namespace distill

// In CUDA translation units, element-wise expressions on Cuda compile into their own kernels.
#if defined(__CUDACC__)
#include "distill/cuda/expr.cuh"
#endif
