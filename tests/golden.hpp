// Loader for the golden fixtures exported by tools/export_op_fixtures.py (PyTorch / HF transformers):
//   tensor <name> <rank> <dims...>\n<values>\n   (values in float64, text)
#pragma once
#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include "distill/tensor/tensor.hpp"

namespace distill::test {

using Golden = std::map<std::string, Tensor<double>>;

inline Golden load_golden(const std::string& case_name) {
  const std::string path = std::string(DISTILL_SOURCE_DIR) + "/tests/golden/ops/" + case_name + ".txt";
  std::ifstream in(path);
  if (!in) throw Error("missing golden fixture " + path + " (tools/export_op_fixtures.py makes it)");
  Golden g;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream hs(line);
    std::string kw, name;
    int rank = 0;
    hs >> kw >> name >> rank;
    if (kw != "tensor" || rank < 0 || rank > kMaxRank) throw Error("bad header line in " + path + ": " + line);
    Shape s;
    for (int i = 0; i < rank; ++i) {
      int64_t d = 0;
      hs >> d;
      s.push_back(d);
    }
    std::string values;
    std::getline(in, values);
    std::istringstream vs(values);
    auto t = Tensor<double>::empty(s);
    for (int64_t i = 0; i < t.numel(); ++i)
      if (!(vs >> t.data()[i])) throw Error("short value line for " + name + " in " + path);
    g[name] = t;
  }
  return g;
}

template <class T>
Tensor<T> as(const Tensor<double>& t) {
  return t.cast<T>();
}

inline Tensor<int32_t> as_ids(const Tensor<double>& t) { return t.cast<int32_t>(); }

}  // namespace distill::test
