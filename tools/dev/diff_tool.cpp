// Differential harness: stdin JSON lines {"tok": "<tokenizer.json>", "texts": [hex...], "ids": [[...]]} ->
// stdout {"load": "ok"|"err: ...", "enc": [[ids]|"err"...] (with and without special), "dec": [str hex...]}
#include <iostream>
#include <nlohmann/json.hpp>
#include "distill/text/tokenizer.hpp"
using namespace distill::text;
static std::string unhex(const std::string& h) {
  std::string o;
  for (size_t i = 0; i + 1 < h.size(); i += 2) o.push_back((char)std::stoi(h.substr(i, 2), nullptr, 16));
  return o;
}
static std::string hex(const std::string& s) {
  static const char* d = "0123456789abcdef";
  std::string o;
  for (unsigned char c : s) {
    o += d[c >> 4];
    o += d[c & 15];
  }
  return o;
}
int main() {
  std::string line;
  while (std::getline(std::cin, line)) {
    auto j = nlohmann::json::parse(line);
    nlohmann::json out;
    Tokenizer t;
    try {
      t = Tokenizer::from_json(j["tok"].get<std::string>(), "diff");
      out["load"] = "ok";
    } catch (const distill::Error& e) {
      out["load"] = std::string("err: ") + e.what();
      std::cout << out.dump() << "\n";
      continue;
    }
    nlohmann::json enc = nlohmann::json::array();
    for (auto& h : j["texts"]) {
      for (bool sp : {true, false}) {
        try {
          enc.push_back(t.encode(unhex(h.get<std::string>()), sp));
        } catch (const distill::Error& e) {
          enc.push_back(std::string("err: ") + e.what());
        }
      }
    }
    out["enc"] = enc;
    nlohmann::json dec = nlohmann::json::array();
    for (auto& ids : j["ids"]) {
      for (bool skip : {true, false}) {
        try {
          dec.push_back(hex(t.decode(ids.get<std::vector<int32_t>>(), skip)));
        } catch (const distill::Error& e) {
          dec.push_back(std::string("err: ") + e.what());
        }
      }
    }
    out["dec"] = dec;
    std::cout << out.dump() << std::endl;
  }
}
