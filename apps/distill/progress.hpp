// A one-line progress bar for long jobs (train, generate, eval): redrawn in place on a terminal stream.
#pragma once
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ostream>
#include <string>

namespace distill::app {

// A one-line progress bar on a terminal stream: [#####.....] step/total, rate, ETA, then fields.
class ProgressBar {
 public:
  ProgressBar(std::ostream& os, int64_t total, bool enabled) : os_(os), total_(total), on_(enabled) {
    t0_ = std::chrono::steady_clock::now();
  }
  void update(int64_t done, const std::string& fields) {
    if (!on_) return;
    const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
    const double frac = total_ > 0 ? static_cast<double>(done) / static_cast<double>(total_) : 0;
    const int w = 24, fill = static_cast<int>(frac * w);
    std::string bar(static_cast<size_t>(fill), '#');
    bar.resize(w, '.');
    const double eta = done > start_ ? el / static_cast<double>(done - start_) * static_cast<double>(total_ - done) : 0;
    char line[512];
    std::snprintf(line, sizeof line, "\r[%s] %lld/%lld %3.0f%% %s eta %s  %s", bar.c_str(),
                  static_cast<long long>(done), static_cast<long long>(total_), 100 * frac, hms(el).c_str(),
                  hms(eta).c_str(), fields.c_str());
    os_ << line << (done >= total_ ? "\n" : "") << std::flush;
  }
  void set_start(int64_t s) { start_ = s; }
  double elapsed() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count(); }

 private:
  static std::string hms(double s) {
    const auto t = static_cast<long long>(s);
    char b[32];
    std::snprintf(b, sizeof b, "%lld:%02lld:%02lld", t / 3600, t / 60 % 60, t % 60);
    return b;
  }
  std::ostream& os_;
  int64_t total_, start_ = 0;
  bool on_;
  std::chrono::steady_clock::time_point t0_;
};

}  // namespace distill::app
