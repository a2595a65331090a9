// Synthetic GSM8K-style word problems for the demo (issue 8): multi-step arithmetic stories with a worked solution
// in GSM8K's own answer format — one sentence per step with the calculation annotated as <<a*b=c>>, then
// "#### N" — so the dataset loader, the answer extraction and lm-eval's scorer (gsm8k.hpp) apply unchanged.
//
// A problem is a pure function of (seed, index): a counter-based generator (splitmix64), no std:: distributions,
// so the same seed gives the same problems on every platform. Five story families of 2 or 3 steps (+, -, x, exact
// division); every intermediate and final value is a non-negative integer. check_solution() recomputes every
// <<...>> annotation and the final answer: the generator's output is verified by the tests, and teacher traces
// for the demo can be verified the same way.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "distill/core/error.hpp"

namespace distill::data {

struct SyntheticProblem {
  std::string question;
  std::string answer;  // GSM8K format: worked steps, then "#### N"
  int64_t value = 0;   // N
  int steps = 0;       // calculations in the solution
  std::string family;  // which story template
  // Each step on its own: a one-step word problem whose worked answer is that step's line of `answer`, then
  // "#### <its result>" (the demo's student learns these, never the chain).
  struct OneStep {
    std::string question, answer;
  };
  std::vector<OneStep> one_steps;
};

struct SyntheticOptions {
  int64_t max_operand = 12;  // factors and counts are drawn from [2, max_operand]
  int min_steps = 2, max_steps = 3;
  void validate() const {
    DISTILL_CHECK(max_operand >= 4 && max_operand <= 1000, "synthetic problems: max_operand ", max_operand,
                  " is outside [4, 1000]");
    DISTILL_CHECK(min_steps >= 2 && min_steps <= max_steps && max_steps <= 3,
                  "synthetic problems: steps must satisfy 2 <= min_steps <= max_steps <= 3, got ", min_steps, "..",
                  max_steps);
  }
};

namespace detail {

struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  int64_t range(int64_t lo, int64_t hi) {  // uniform in [lo, hi]
    return lo + static_cast<int64_t>(next() % static_cast<uint64_t>(hi - lo + 1));
  }
  template <class C>
  const auto& pick(const C& c) {
    return c[static_cast<size_t>(next() % c.size())];
  }
};

struct Person {
  const char* name;
  const char* subj;  // he / she
  const char* poss;  // his / her
};
inline const std::vector<Person>& people() {
  static const std::vector<Person> p{{"Mia", "she", "her"}, {"Liam", "he", "his"},  {"Ava", "she", "her"},
                                     {"Noah", "he", "his"}, {"Emma", "she", "her"}, {"Omar", "he", "his"},
                                     {"Zoe", "she", "her"}, {"Ravi", "he", "his"},  {"Lena", "she", "her"},
                                     {"Theo", "he", "his"}, {"Nora", "she", "her"}, {"Sam", "he", "his"}};
  return p;
}
inline const std::vector<const char*>& items() {
  static const std::vector<const char*> i{"apple",  "pencil", "cookie", "marble", "sticker", "book",
                                          "orange", "card",   "shell",  "stamp",  "candle",  "ball"};
  return i;
}

inline std::string calc(int64_t a, char op, int64_t b, int64_t c) {
  const std::string sa = std::to_string(a), sb = std::to_string(b), sc = std::to_string(c);
  const std::string o(1, op);
  return sa + " " + o + " " + sb + " = <<" + sa + o + sb + "=" + sc + ">>" + sc;
}
inline std::string cap(std::string s) {
  if (!s.empty() && s[0] >= 'a' && s[0] <= 'z') s[0] = static_cast<char>(s[0] - 'a' + 'A');
  return s;
}

}  // namespace detail

// Problem `index` of the stream `seed`.
inline SyntheticProblem synthetic_problem(uint64_t seed, uint64_t index, const SyntheticOptions& opt = {}) {
  opt.validate();
  detail::Rng g{seed * 0x2545F4914F6CDD1Dull ^ (index + 1) * 0x9E3779B97F4A7C15ull};
  g.next();
  const auto& who = g.pick(detail::people());
  const std::string item = g.pick(detail::items());
  const std::string items = item + "s";
  const int64_t hi = opt.max_operand;
  const int steps = static_cast<int>(g.range(opt.min_steps, opt.max_steps));
  SyntheticProblem p;
  p.steps = steps;
  const std::string name = who.name, he = who.subj, his = who.poss;
  std::vector<std::string> subs;  // the one-step questions, one per line of the answer
  if (steps == 2) {
    switch (g.next() % 4) {
      case 0: {  // groups, then give some away
        const int64_t a = g.range(2, hi), b = g.range(2, hi), total = a * b, c = g.range(1, total - 1);
        p.family = "groups_minus";
        p.question = name + " has " + std::to_string(a) + " boxes with " + std::to_string(b) + " " + items +
                     " in each box. " + detail::cap(he) + " gives away " + std::to_string(c) + " " + items +
                     ". How many " + items + " does " + he + " have left?";
        p.answer = name + " has " + detail::calc(a, '*', b, total) + " " + items + ".\nAfter giving away " +
                   std::to_string(c) + ", " + he + " has " + detail::calc(total, '-', c, total - c) + " " + items +
                   " left.";
        p.value = total - c;
        subs = {name + " has " + std::to_string(a) + " boxes with " + std::to_string(b) + " " + items +
                    " in each box. How many " + items + " does " + he + " have?",
                name + " has " + std::to_string(total) + " " + items + ". " + detail::cap(he) + " gives away " +
                    std::to_string(c) + " " + items + ". How many " + items + " does " + he + " have left?"};
        break;
      }
      case 1: {  // collect on two days, share equally
        const int64_t k = g.range(2, std::min<int64_t>(hi, 9)), each = g.range(2, hi), s = k * each;
        const int64_t a = g.range(1, s - 1), b = s - a;
        p.family = "sum_share";
        p.question = name + " collects " + std::to_string(a) + " " + items + " on Monday and " + std::to_string(b) +
                     " more on Tuesday. " + detail::cap(he) + " shares them equally among " + std::to_string(k) +
                     " friends. How many " + items + " does each friend get?";
        p.answer = name + " collects " + detail::calc(a, '+', b, s) + " " + items + " in all.\nEach friend gets " +
                   detail::calc(s, '/', k, each) + " " + items + ".";
        p.value = each;
        subs = {name + " collects " + std::to_string(a) + " " + items + " on Monday and " + std::to_string(b) +
                    " more on Tuesday. How many " + items + " does " + he + " collect in all?",
                name + " has " + std::to_string(s) + " " + items + ". " + detail::cap(he) +
                    " shares them equally among " + std::to_string(k) + " friends. How many " + items +
                    " does each friend get?"};
        break;
      }
      case 2: {  // rate x time x days
        const int64_t r = g.range(2, hi), h = g.range(2, std::min<int64_t>(hi, 10)), d = g.range(2, 7);
        p.family = "rate_days";
        p.question = "A machine makes " + std::to_string(r) + " " + items + " every hour. It runs for " +
                     std::to_string(h) + " hours a day. How many " + items + " does it make in " + std::to_string(d) +
                     " days?";
        p.answer = "Each day it makes " + detail::calc(r, '*', h, r * h) + " " + items + ".\nIn " + std::to_string(d) +
                   " days it makes " + detail::calc(r * h, '*', d, r * h * d) + " " + items + ".";
        p.value = r * h * d;
        subs = {"A machine makes " + std::to_string(r) + " " + items + " every hour. It runs for " + std::to_string(h) +
                    " hours a day. How many " + items + " does it make each day?",
                "A machine makes " + std::to_string(r * h) + " " + items + " each day. How many " + items +
                    " does it make in " + std::to_string(d) + " days?"};
        break;
      }
      default: {  // buy, pay with a bill
        const int64_t a = g.range(2, hi), price = g.range(2, hi), cost = a * price;
        const int64_t bill = ((cost / 10) + 1 + g.range(0, 2)) * 10;
        p.family = "change";
        p.question = name + " buys " + std::to_string(a) + " " + items + " at $" + std::to_string(price) +
                     " each and pays with $" + std::to_string(bill) + ". How much change does " + he + " get?";
        p.answer = "The " + items + " cost " + detail::calc(a, '*', price, cost) + " dollars.\n" + detail::cap(his) +
                   " change is " + detail::calc(bill, '-', cost, bill - cost) + " dollars.";
        p.value = bill - cost;
        subs = {name + " buys " + std::to_string(a) + " " + items + " at $" + std::to_string(price) +
                    " each. How much do the " + items + " cost?",
                name + " buys " + items + " that cost $" + std::to_string(cost) + " and pays with $" +
                    std::to_string(bill) + ". How much change does " + he + " get?"};
        break;
      }
    }
  } else {  // three steps: money left after two purchases
    const int64_t a = g.range(2, hi), price = g.range(2, hi), cost = a * price, extra = g.range(2, hi);
    const int64_t spent = cost + extra, money = spent + g.range(1, 5 * hi);
    const std::string other = g.pick(detail::items());
    p.family = "budget";
    p.question = name + " has $" + std::to_string(money) + ". " + detail::cap(he) + " buys " + std::to_string(a) + " " +
                 items + " for $" + std::to_string(price) + " each and a " + other + " for $" + std::to_string(extra) +
                 ". How much money does " + he + " have left?";
    p.answer = "The " + items + " cost " + detail::calc(a, '*', price, cost) + " dollars.\n" + detail::cap(he) +
               " spends " + detail::calc(cost, '+', extra, spent) + " dollars in all.\n" + detail::cap(he) + " has " +
               detail::calc(money, '-', spent, money - spent) + " dollars left.";
    p.value = money - spent;
    subs = {name + " buys " + std::to_string(a) + " " + items + " for $" + std::to_string(price) +
                " each. How much do the " + items + " cost?",
            name + " spends $" + std::to_string(cost) + " on " + items + " and buys a " + other + " for $" +
                std::to_string(extra) + ". How much does " + he + " spend in all?",
            name + " has $" + std::to_string(money) + ". " + detail::cap(he) + " spends $" + std::to_string(spent) +
                ". How much money does " + he + " have left?"};
  }
  // The one-step problems: question i is answered by line i of the worked answer.
  for (size_t i = 0, start = 0; i < subs.size(); ++i) {
    const size_t nl = p.answer.find('\n', start);
    const std::string line = p.answer.substr(start, nl == std::string::npos ? std::string::npos : nl - start);
    const size_t r = line.rfind(">>");
    size_t e = r + 2;
    while (e < line.size() && line[e] >= '0' && line[e] <= '9') ++e;
    p.one_steps.push_back({subs[i], line + "\n#### " + line.substr(r + 2, e - r - 2)});
    start = nl == std::string::npos ? p.answer.size() : nl + 1;
  }
  p.answer += "\n#### " + std::to_string(p.value);
  return p;
}

// n distinct problems (by question text) of the stream `seed`, skipping any whose question is in `exclude` (e.g.
// the training set when drawing held-out problems). Throws when the options cannot give n distinct problems.
inline std::vector<SyntheticProblem> synthetic_problems(uint64_t seed, int64_t n, const SyntheticOptions& opt = {},
                                                        const std::unordered_set<std::string>* exclude = nullptr) {
  DISTILL_CHECK(n >= 0, "synthetic problems: n = ", n, " is negative");
  std::vector<SyntheticProblem> out;
  std::unordered_set<std::string> seen;
  const uint64_t limit = static_cast<uint64_t>(n) * 50 + 1000;
  for (uint64_t i = 0; static_cast<int64_t>(out.size()) < n; ++i) {
    DISTILL_CHECK(i < limit, "synthetic problems: only ", out.size(), " distinct problems of ", n, " after ", limit,
                  " draws (raise max_operand)");
    SyntheticProblem p = synthetic_problem(seed, i, opt);
    if ((exclude && exclude->count(p.question)) || !seen.insert(p.question).second) continue;
    out.push_back(std::move(p));
  }
  return out;
}

// Recomputes every "<<a op b=c>>" annotation of a GSM8K-style solution and checks that the "#### N" line equals the
// last result. Returns the first problem found, or nullopt when the solution is consistent. Integers only.
inline std::optional<std::string> check_solution(std::string_view sol) {
  auto num = [](std::string_view s, size_t& i, int64_t& v) {
    size_t j = i;
    bool neg = false;
    if (j < s.size() && s[j] == '-') {
      neg = true;
      ++j;
    }
    const size_t start = j;
    int64_t x = 0;
    while (j < s.size() && s[j] >= '0' && s[j] <= '9') {
      if (x > (INT64_MAX - 9) / 10) return false;
      x = x * 10 + (s[j] - '0');
      ++j;
    }
    if (j == start) return false;
    v = neg ? -x : x;
    i = j;
    return true;
  };
  std::optional<int64_t> last;
  int count = 0;
  for (size_t pos = sol.find("<<"); pos != std::string_view::npos; pos = sol.find("<<", pos + 2)) {
    const size_t end = sol.find(">>", pos);
    if (end == std::string_view::npos) return "unterminated <<";
    const std::string_view e = sol.substr(pos + 2, end - pos - 2);
    size_t i = 0;
    int64_t a = 0, b = 0, c = 0;
    if (!num(e, i, a) || i >= e.size()) return "malformed annotation <<" + std::string(e) + ">>";
    const char op = e[i++];
    if (!num(e, i, b) || i >= e.size() || e[i++] != '=' || !num(e, i, c) || i != e.size())
      return "malformed annotation <<" + std::string(e) + ">>";
    int64_t want = 0;
    switch (op) {
      case '+':
        want = a + b;
        break;
      case '-':
        want = a - b;
        break;
      case '*':
        want = a * b;
        break;
      case '/':
        if (b == 0 || a % b != 0) return "inexact division <<" + std::string(e) + ">>";
        want = a / b;
        break;
      default:
        return "unknown operator in <<" + std::string(e) + ">>";
    }
    if (want != c) return "wrong result <<" + std::string(e) + ">> (should be " + std::to_string(want) + ")";
    last = c;
    ++count;
  }
  const size_t h = sol.rfind("#### ");
  if (h == std::string_view::npos) return "no #### line";
  size_t i = h + 5;
  int64_t v = 0;
  if (!num(sol, i, v)) return "the #### line holds no integer";
  if (count == 0) return "no <<...>> calculation";
  if (v != *last) return "#### " + std::to_string(v) + " is not the last result " + std::to_string(*last);
  return std::nullopt;
}

}  // namespace distill::data
