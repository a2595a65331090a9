// Hub ids resolved in a local Hugging Face cache (io/hf_hub.hpp), on a cache laid out as huggingface_hub writes it:
// the environment variables in huggingface_hub's order, refs/main -> snapshots/<commit>, a commit hash as the
// revision, a directory passed as is, and each way it fails (not cached, damaged ref, missing snapshot, partial
// download, no ref and several snapshots) with a message that says how to get the weights.
#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>

#include "distill/io/hf_hub.hpp"
#include "temp_dir.hpp"

using namespace distill;
namespace fs = std::filesystem;

namespace {

// Sets (or unsets) an environment variable for the scope, restoring it after.
struct EnvVar {
  std::string name;
  std::optional<std::string> old;
  EnvVar(const char* n, const char* v) : name(n) {
    if (const char* o = std::getenv(n)) old = o;
    if (v)
      ::setenv(n, v, 1);
    else
      ::unsetenv(n);
  }
  ~EnvVar() {
    if (old)
      ::setenv(name.c_str(), old->c_str(), 1);
    else
      ::unsetenv(name.c_str());
  }
};

const std::string kCommit = "0123456789abcdef0123456789abcdef01234567";

fs::path make_snapshot(const fs::path& cache, const std::string& folder, const std::string& commit, bool ref = true,
                       bool config = true) {
  const fs::path snap = cache / folder / "snapshots" / commit;
  fs::create_directories(snap);
  if (config) std::ofstream(snap / "config.json") << "{}";
  if (ref) {
    fs::create_directories(cache / folder / "refs");
    std::ofstream(cache / folder / "refs" / "main") << commit;  // huggingface_hub writes no newline
  }
  return snap;
}

std::string error_of(const std::string& model, const std::string& rev = "main") {
  try {
    io::resolve_model_dir(model, rev);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("hf_hub_cache_dir follows huggingface_hub's environment variables") {
  EnvVar a("HF_HUB_CACHE", nullptr), b("HUGGINGFACE_HUB_CACHE", nullptr), c("HF_HOME", nullptr),
      d("XDG_CACHE_HOME", nullptr), h("HOME", "/home/u");
  CHECK(io::hf_hub_cache_dir() == "/home/u/.cache/huggingface/hub");
  {
    EnvVar x("XDG_CACHE_HOME", "/xdg");
    CHECK(io::hf_hub_cache_dir() == "/xdg/huggingface/hub");
    EnvVar y("HF_HOME", "~/hf");
    CHECK(io::hf_hub_cache_dir() == "/home/u/hf/hub");
    EnvVar z("HUGGINGFACE_HUB_CACHE", "/legacy");
    CHECK(io::hf_hub_cache_dir() == "/legacy");
    EnvVar w("HF_HUB_CACHE", "${HOME}/c/$HOME");
    CHECK(io::hf_hub_cache_dir() == "/home/u/c//home/u");
  }
  EnvVar u("HF_HUB_CACHE", "/x/$UNSET_DISTILL_VAR/y");
  CHECK(io::hf_hub_cache_dir() == "/x/$UNSET_DISTILL_VAR/y");  // unset variables stay, as os.path.expandvars
}

TEST_CASE("resolve_model_dir: directories as is, hub ids to their cached snapshot") {
  test::TempDir tmp("hub");
  EnvVar cache("HF_HUB_CACHE", tmp.str().c_str());
  CHECK(io::resolve_model_dir(tmp.str()) == tmp.str());
  const fs::path snap = make_snapshot(tmp.path, "models--Qwen--Qwen3-4B-Thinking-2507", kCommit);
  CHECK(io::resolve_model_dir("Qwen/Qwen3-4B-Thinking-2507") == snap.string());
  // A commit hash as the revision, without a ref for it.
  const std::string other = "fedcba9876543210fedcba9876543210fedcba98";
  const fs::path snap2 = make_snapshot(tmp.path, "models--Qwen--Qwen3-4B-Thinking-2507", other, false);
  CHECK(io::resolve_model_dir("Qwen/Qwen3-4B-Thinking-2507", other) == snap2.string());
  // No ref at all and a single snapshot: that one.
  const fs::path solo = make_snapshot(tmp.path, "models--gpt2", kCommit, false);
  CHECK(io::resolve_model_dir("gpt2") == solo.string());
}

TEST_CASE("resolve_model_dir fails with what to do") {
  test::TempDir tmp("hub");
  EnvVar cache("HF_HUB_CACHE", tmp.str().c_str());
  std::string e = error_of("google/gemma-3-1b-it");
  CHECK(e.find("neither a directory nor in the Hugging Face cache") != std::string::npos);
  CHECK(e.find("models--google--gemma-3-1b-it") != std::string::npos);
  CHECK(e.find("hf download google/gemma-3-1b-it") != std::string::npos);
  CHECK(error_of("./no/such/dir").find("no such directory") != std::string::npos);
  CHECK(error_of("a/b/c").find("no such directory") != std::string::npos);
  // Damaged ref, missing snapshot, partial download, ambiguous snapshots.
  make_snapshot(tmp.path, "models--o--bad-ref", kCommit);
  std::ofstream(tmp.path / "models--o--bad-ref" / "refs" / "main") << "not a hash";
  CHECK(error_of("o/bad-ref").find("does not hold a commit hash") != std::string::npos);
  fs::create_directories(tmp.path / "models--o--gone" / "refs");
  std::ofstream(tmp.path / "models--o--gone" / "refs" / "main") << kCommit << "\n";
  CHECK(error_of("o/gone").find("download was interrupted") != std::string::npos);
  make_snapshot(tmp.path, "models--o--partial", kCommit, true, false);
  CHECK(error_of("o/partial").find("has no config.json") != std::string::npos);
  make_snapshot(tmp.path, "models--o--two", kCommit, false);
  make_snapshot(tmp.path, "models--o--two", "fedcba9876543210fedcba9876543210fedcba98", false);
  CHECK(error_of("o/two").find("2 snapshots") != std::string::npos);
}
