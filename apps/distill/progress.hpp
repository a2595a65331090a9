// A one-line progress bar for long jobs (train, generate, eval): redrawn in place on a terminal stream.
#pragma once
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <ostream>
#include <string>

#include <unistd.h>

namespace distill::app {

// A progress bar: [#####.....] done/total, elapsed, ETA, then fields. On a terminal it is one line redrawn in place
// (at most 10 times a second); on a file or pipe (logs, CI) it is a plain line at every tenth of the way.
class ProgressBar {
 public:
  ProgressBar(std::ostream& os, int64_t total, bool enabled) : os_(os), total_(total), on_(enabled) {
    t0_ = last_ = std::chrono::steady_clock::now();
    const int fd = &os == &std::cerr ? 2 : &os == &std::cout ? 1 : -1;
    tty_ = fd >= 0 && ::isatty(fd) == 1;
  }
  void update(int64_t done, const std::string& fields) {
    if (!on_) return;
    const auto now = std::chrono::steady_clock::now();
    const bool end = done >= total_;
    if (tty_) {
      if (!end && std::chrono::duration<double>(now - last_).count() < 0.1) return;
    } else {
      const int64_t tenth = total_ > 0 ? done * 10 / total_ : 10;
      if (!end && tenth <= last_tenth_) return;
      last_tenth_ = tenth;
    }
    last_ = now;
    const double el = std::chrono::duration<double>(now - t0_).count();
    const double frac = total_ > 0 ? static_cast<double>(done) / static_cast<double>(total_) : 0;
    const int w = 24, fill = static_cast<int>(frac * w);
    std::string bar(static_cast<size_t>(fill), '#');
    bar.resize(w, '.');
    const double eta = done > start_ ? el / static_cast<double>(done - start_) * static_cast<double>(total_ - done) : 0;
    char line[512];
    std::snprintf(line, sizeof line, "%s[%s] %lld/%lld %3.0f%% %s eta %s  %s%s", tty_ ? "\r" : "", bar.c_str(),
                  static_cast<long long>(done), static_cast<long long>(total_), 100 * frac, hms(el).c_str(),
                  hms(eta).c_str(), fields.c_str(), tty_ ? "\x1b[K" : "");
    os_ << line << (end || !tty_ ? "\n" : "") << std::flush;
  }
  void set_start(int64_t s) {
    start_ = s;
    last_tenth_ = total_ > 0 ? s * 10 / total_ : 0;
  }
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
  bool on_, tty_ = false;
  int64_t last_tenth_ = 0;
  std::chrono::steady_clock::time_point t0_, last_;
};

}  // namespace distill::app
