// Training curves as an SVG image (loss, learning rate and gradient norm per step, stacked panels sharing the step
// axis, epoch boundaries marked): `distill train` writes OUT/train_curves.svg beside train_log.jsonl as it goes.
// SVG because it is an image every browser and editor shows, with no image library to link. Non-finite values
// leave a gap in their line; an empty history gives a valid image that says so.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "distill/io/file.hpp"
#include "distill/train/trainer.hpp"

namespace distill::train {

namespace plot {

// "Nice" tick values (1, 2, 5 × 10^k) covering [lo, hi], about `target` of them.
inline std::vector<double> ticks(double lo, double hi, int target = 5) {
  if (!(hi > lo)) return {lo};
  const double raw = (hi - lo) / std::max(1, target);
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double f = raw / mag;
  const double step = (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * mag;
  std::vector<double> t;
  for (double v = std::ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step)
    t.push_back(std::abs(v) < step * 1e-9 ? 0.0 : v);
  return t;
}

// A tick label: plain for ordinary magnitudes, "2e-04" style for tiny or huge ones.
inline std::string label(double v) {
  char b[32];
  const double a = std::abs(v);
  if (a != 0 && (a < 1e-3 || a >= 1e5))
    std::snprintf(b, sizeof b, "%.0e", v);
  else
    std::snprintf(b, sizeof b, "%g", v);
  return b;
}

inline std::string escape(std::string_view s) {
  std::string o;
  for (const char c : s) {
    if (c == '<')
      o += "&lt;";
    else if (c == '>')
      o += "&gt;";
    else if (c == '&')
      o += "&amp;";
    else if (c == '"')
      o += "&quot;";
    else
      o += c;
  }
  return o;
}

struct Panel {
  std::string title;
  std::string color;
  std::vector<double> x, y;  // same length; non-finite y values are gaps
};

}  // namespace plot

// The SVG text of stacked panels sharing their x axis. `marks`: x positions of dashed vertical lines (epochs).
inline std::string svg_panels(const std::vector<plot::Panel>& panels, const std::string& title,
                              const std::vector<double>& marks = {}) {
  constexpr double W = 760, H = 190, L = 78, R = 20, T = 34, B = 30;  // one panel and its margins
  const double total_h = 40 + H * static_cast<double>(std::max<size_t>(panels.size(), 1));
  std::string s;
  char buf[256];
  auto f = [&](const char* fmt, auto... a) {
    std::snprintf(buf, sizeof buf, fmt, a...);
    s += buf;
  };
  f("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" "
    "font-family=\"sans-serif\" font-size=\"12\">\n",
    W, total_h, W, total_h);
  f("<rect width=\"%.0f\" height=\"%.0f\" fill=\"white\"/>\n", W, total_h);
  f("<text x=\"%.0f\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">", W / 2);
  s += plot::escape(title);
  s += "</text>\n";
  bool any = false;
  for (const auto& p : panels) any = any || !p.x.empty();
  if (!any) {
    f("<text x=\"%.0f\" y=\"120\" text-anchor=\"middle\">no steps logged yet</text>\n</svg>\n", W / 2);
    return s;
  }
  for (size_t k = 0; k < panels.size(); ++k) {
    const plot::Panel& p = panels[k];
    const double top = 40 + H * static_cast<double>(k), x0 = L, x1 = W - R, y0 = top + T, y1 = top + H - B;
    double xmin = 1e300, xmax = -1e300, ymin = 1e300, ymax = -1e300;
    for (size_t i = 0; i < p.x.size(); ++i) {
      xmin = std::min(xmin, p.x[i]);
      xmax = std::max(xmax, p.x[i]);
      if (std::isfinite(p.y[i])) {
        ymin = std::min(ymin, p.y[i]);
        ymax = std::max(ymax, p.y[i]);
      }
    }
    if (xmin > xmax) xmin = xmax = 0;
    if (ymin > ymax) ymin = ymax = 0;
    if (xmax == xmin) xmax = xmin + 1;
    if (ymax == ymin) {
      const double d = ymin == 0 ? 1 : std::abs(ymin) * 0.1;
      ymin -= d;
      ymax += d;
    }
    const auto yt = plot::ticks(ymin, ymax), xt = plot::ticks(xmin, xmax, 8);
    ymin = std::min(ymin, yt.front());
    ymax = std::max(ymax, yt.back());
    auto X = [&](double v) { return x0 + (v - xmin) / (xmax - xmin) * (x1 - x0); };
    auto Y = [&](double v) { return y1 - (v - ymin) / (ymax - ymin) * (y1 - y0); };
    f("<text x=\"%.1f\" y=\"%.1f\" font-weight=\"bold\">%s</text>\n", x0, top + 20, plot::escape(p.title).c_str());
    f("<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#888\"/>\n", x0, y0, x1 - x0,
      y1 - y0);
    for (const double v : yt) {
      f("<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#eee\"/>\n", x0, Y(v), x1, Y(v));
      f("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n", x0 - 6, Y(v) + 4, plot::label(v).c_str());
    }
    for (const double v : xt)
      f("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n", X(v), y1 + 16, plot::label(v).c_str());
    for (const double m : marks)
      if (m > xmin && m < xmax)
        f("<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#bbb\" stroke-dasharray=\"4 3\"/>\n", X(m),
          y0, X(m), y1);
    // One polyline per run of finite values.
    std::string pts;
    auto flush = [&] {
      if (!pts.empty()) {
        f("<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" points=\"", p.color.c_str());
        s += pts;
        s += "\"/>\n";
      }
      pts.clear();
    };
    for (size_t i = 0; i < p.x.size(); ++i) {
      if (!std::isfinite(p.y[i])) {
        flush();
        continue;
      }
      std::snprintf(buf, sizeof buf, "%s%.1f,%.1f", pts.empty() ? "" : " ", X(p.x[i]), Y(p.y[i]));
      pts += buf;
    }
    flush();
  }
  f("<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">step</text>\n", W / 2, total_h - 4);
  s += "</svg>\n";
  return s;
}

// Loss, learning rate and gradient norm per step; dashed lines where an epoch ends.
inline std::string training_curves_svg(const std::vector<StepLog>& h, const std::string& title) {
  plot::Panel loss{"loss", "#1f77b4", {}, {}}, lr{"learning rate", "#d62728", {}, {}},
      gn{"gradient norm (before clipping)", "#2ca02c", {}, {}};
  std::vector<double> marks;
  for (size_t i = 0; i < h.size(); ++i) {
    const double x = static_cast<double>(h[i].step);
    for (auto* p : {&loss, &lr, &gn}) p->x.push_back(x);
    loss.y.push_back(h[i].loss);
    lr.y.push_back(h[i].lr);
    gn.y.push_back(h[i].grad_norm);
    if (i + 1 < h.size() && std::floor(h[i + 1].epoch - 1e-9) > std::floor(h[i].epoch - 1e-9)) marks.push_back(x);
  }
  return svg_panels({loss, lr, gn}, title, marks);
}

// Writes the curves to `path` atomically (a reader never sees half an image).
inline void write_training_curves(const std::vector<StepLog>& h, const std::string& path, const std::string& title) {
  io::atomic_write(path, training_curves_svg(h, title));
}

}  // namespace distill::train
