// Training curves as SVG (train/plot.hpp): nice ticks and labels, the image's structure (three panels, one point per
// logged step, coordinates inside the image, a higher loss drawn higher), gaps for non-finite values, epoch marks,
// escaping of the title, an empty history, and the atomic write.
#include <doctest/doctest.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "distill/train/plot.hpp"
#include "temp_dir.hpp"

using namespace distill;
using namespace distill::train;

namespace {

std::vector<StepLog> history(int n, int steps_per_epoch) {
  std::vector<StepLog> h;
  for (int i = 1; i <= n; ++i) {
    StepLog l;
    l.step = i;
    l.epoch = static_cast<double>(i) / steps_per_epoch;
    l.loss = 3.0 * std::exp(-0.05 * i) + 0.5;
    l.lr = 2e-4 * std::min(1.0, i / 5.0);
    l.grad_norm = 1.0 + 0.1 * (i % 3);
    h.push_back(l);
  }
  return h;
}

// The polylines' point lists, as (x, y) pairs.
std::vector<std::vector<std::pair<double, double>>> polylines(const std::string& svg) {
  std::vector<std::vector<std::pair<double, double>>> out;
  const std::regex re("<polyline[^>]*points=\"([^\"]*)\"");
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), re); it != std::sregex_iterator(); ++it) {
    std::vector<std::pair<double, double>> pts;
    std::istringstream in((*it)[1].str());
    std::string tok;
    while (in >> tok) {
      const auto c = tok.find(',');
      pts.emplace_back(std::stod(tok.substr(0, c)), std::stod(tok.substr(c + 1)));
    }
    out.push_back(pts);
  }
  return out;
}

}  // namespace

TEST_CASE("plot ticks are 1-2-5 steps covering the range; labels switch to exponents for tiny values") {
  CHECK(plot::ticks(0, 1) == std::vector<double>{0, 0.2, 0.4, 0.6000000000000001, 0.8, 1});
  const auto t = plot::ticks(0, 2e-4);
  REQUIRE(t.size() >= 3);
  CHECK(t.front() == 0);
  CHECK(t.back() == doctest::Approx(2e-4));
  CHECK(plot::ticks(3, 3) == std::vector<double>{3});
  CHECK(plot::label(2e-4) == "2e-04");
  CHECK(plot::label(0.5) == "0.5");
  CHECK(plot::label(120) == "120");
}

TEST_CASE("training_curves_svg: three panels, a point per step, higher loss drawn higher, epoch marks") {
  const auto h = history(40, 10);
  const std::string svg = training_curves_svg(h, "run <a&b>");
  CHECK(svg.rfind("<svg", 0) == 0);
  CHECK(svg.find("</svg>") != std::string::npos);
  CHECK(svg.find("run &lt;a&amp;b&gt;") != std::string::npos);
  for (const char* t : {">loss<", ">learning rate<", ">gradient norm"}) CHECK(svg.find(t) != std::string::npos);
  const auto lines = polylines(svg);
  REQUIRE(lines.size() == 3);
  for (const auto& l : lines) CHECK(l.size() == 40);
  for (const auto& l : lines)
    for (auto [x, y] : l) {
      CHECK(x >= 0);
      CHECK(x <= 760);
      CHECK(y >= 0);
      CHECK(y <= 40 + 3 * 190);
    }
  // Loss falls: later points sit lower on the image (larger y); x grows with the step.
  CHECK(lines[0].front().second < lines[0].back().second);
  CHECK(lines[0].front().first < lines[0].back().first);
  // Epoch ends at steps 10, 20, 30 (not 40: the last step) in each of the three panels.
  size_t dashes = 0;
  for (size_t p = svg.find("stroke-dasharray"); p != std::string::npos; p = svg.find("stroke-dasharray", p + 1))
    ++dashes;
  CHECK(dashes == 9);
}

TEST_CASE("non-finite values leave gaps; an empty history is a valid image that says so") {
  auto h = history(10, 100);
  h[4].loss = std::numeric_limits<double>::quiet_NaN();
  h[5].loss = std::numeric_limits<double>::infinity();
  const auto lines = polylines(training_curves_svg(h, "gaps"));
  REQUIRE(lines.size() == 4);  // loss in two pieces, lr, grad norm
  CHECK(lines[0].size() == 4);
  CHECK(lines[1].size() == 4);
  const std::string empty = training_curves_svg({}, "nothing");
  CHECK(empty.find("no steps logged yet") != std::string::npos);
  CHECK(empty.find("</svg>") != std::string::npos);
  CHECK(polylines(empty).empty());
  // One step, constant values: still a drawable image.
  CHECK(polylines(training_curves_svg(history(1, 1), "one")).size() == 3);
}

TEST_CASE("write_training_curves replaces the file atomically") {
  test::TempDir dir("plot");
  const std::string path = dir / "train_curves.svg";
  write_training_curves(history(5, 5), path, "first");
  write_training_curves(history(8, 5), path, "second");
  std::ifstream in(path);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CHECK(text.find("second") != std::string::npos);
  CHECK(polylines(text).front().size() == 8);
}
