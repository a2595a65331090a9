// Models by Hugging Face hub id, found in the local Hugging Face cache (no downloads: Distill never goes online).
//
// resolve_model_dir("Qwen/Qwen3-4B-Thinking-2507") returns the cached snapshot directory, as huggingface_hub lays it
// out (huggingface_hub/constants.py and file_download.py):
//   cache  = $HF_HUB_CACHE, else $HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub,
//            else ~/.cache/huggingface/hub (with ~ and $VARS expanded, as huggingface_hub does)
//   repo   = cache/models--<id with "/" replaced by "--">
//   commit = the contents of repo/refs/<revision> (default "main"), or <revision> itself when it is a commit hash
//   dir    = repo/snapshots/<commit>
// A path to an existing directory is returned as is. Anything else is an error that says where it looked and how to
// get the weights (`hf download <id>`).
#pragma once
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "distill/core/error.hpp"

namespace distill::io {

namespace detail {

inline std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::string(v) : fallback;
}

// os.path.expanduser + os.path.expandvars for the forms cache paths use: a leading ~, $NAME and ${NAME} (unset
// variables are left as they are, as Python does).
inline std::string expand_path(const std::string& p) {
  std::string s = p;
  if (!s.empty() && s[0] == '~' && (s.size() == 1 || s[1] == '/')) s = env_or("HOME", "~") + s.substr(1);
  std::string out;
  for (size_t i = 0; i < s.size();) {
    if (s[i] != '$') {
      out += s[i++];
      continue;
    }
    size_t j = i + 1;
    const bool braced = j < s.size() && s[j] == '{';
    if (braced) ++j;
    const size_t start = j;
    while (j < s.size() && (std::isalnum(static_cast<unsigned char>(s[j])) || s[j] == '_')) ++j;
    const std::string name = s.substr(start, j - start);
    if (name.empty() || (braced && (j >= s.size() || s[j] != '}'))) {
      out += s[i++];
      continue;
    }
    const size_t end = braced ? j + 1 : j;
    const char* v = std::getenv(name.c_str());
    out += v ? std::string(v) : s.substr(i, end - i);
    i = end;
  }
  return out;
}

inline bool looks_like_repo_id(const std::string& s) {
  if (s.empty() || s.size() > 200 || s.front() == '/' || s.front() == '.' || s.find("..") != std::string::npos)
    return false;
  int slashes = 0;
  for (const char c : s) {
    if (c == '/')
      ++slashes;
    else if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.'))
      return false;
  }
  return slashes <= 1 && s.back() != '/';
}

inline bool is_commit_hash(const std::string& s) {
  if (s.size() != 40) return false;
  for (const char c : s)
    if (!std::isxdigit(static_cast<unsigned char>(c))) return false;
  return true;
}

}  // namespace detail

// The hub cache directory huggingface_hub would use in this environment.
inline std::string hf_hub_cache_dir() {
  const std::string home = detail::expand_path(
      detail::env_or("HF_HOME", detail::env_or("XDG_CACHE_HOME", detail::expand_path("~/.cache")) + "/huggingface"));
  return detail::expand_path(detail::env_or("HF_HUB_CACHE", detail::env_or("HUGGINGFACE_HUB_CACHE", home + "/hub")));
}

// A checkpoint directory for `model`: the directory itself, or the cached snapshot of a hub id at `revision`.
inline std::string resolve_model_dir(const std::string& model, const std::string& revision = "main") {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_directory(model, ec)) return model;
  const std::string how = "Download it with `hf download " + model +
                          "` (huggingface_hub; or `huggingface-cli download " + model +
                          "`), or pass the path of a local directory holding config.json and the *.safetensors files";
  if (!detail::looks_like_repo_id(model))
    throw Error("model \"" + model + "\": no such directory (and not a Hugging Face hub id)");
  const std::string cache = hf_hub_cache_dir();
  std::string folder = "models--" + model;
  for (size_t p = folder.find('/'); p != std::string::npos; p = folder.find('/', p)) folder.replace(p, 1, "--");
  const fs::path repo = fs::path(cache) / folder;
  if (!fs::is_directory(repo, ec))
    throw Error("model \"" + model + "\" is neither a directory nor in the Hugging Face cache (looked for " +
                repo.string() + "; the cache is $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub). " +
                how);
  std::string commit;
  if (std::ifstream ref(repo / "refs" / revision); ref) {
    std::getline(ref, commit);
    while (!commit.empty() && std::isspace(static_cast<unsigned char>(commit.back()))) commit.pop_back();
    if (!detail::is_commit_hash(commit))
      throw Error(model + ": " + (repo / "refs" / revision).string() + " does not hold a commit hash (\"" + commit +
                  "\"); the cache entry is damaged. " + how);
  } else if (detail::is_commit_hash(revision)) {
    commit = revision;
  } else {
    // No ref for this revision: take the only snapshot there is, if there is exactly one.
    std::vector<std::string> snaps;
    for (const auto& e : fs::directory_iterator(repo / "snapshots", ec))
      if (e.is_directory()) snaps.push_back(e.path().filename().string());
    if (snaps.size() != 1)
      throw Error(model + ": the Hugging Face cache (" + repo.string() + ") has no refs/" + revision + " and " +
                  std::to_string(snaps.size()) + " snapshots; pass a commit hash as the revision, or " + how);
    commit = snaps[0];
  }
  const fs::path dir = repo / "snapshots" / commit;
  if (!fs::is_directory(dir, ec))
    throw Error(model + ": the Hugging Face cache names commit " + commit + " but " + dir.string() +
                " is missing; the download was interrupted. " + how);
  if (!fs::exists(dir / "config.json", ec))
    throw Error(model + ": the cached snapshot " + dir.string() +
                " has no config.json (a partial download, or a repository that is not a model). " + how);
  return dir.string();
}

}  // namespace distill::io
