// JSONL (one JSON value per line): a streaming reader, an append-only writer, and tail repair for resumable jobs.
//
// Reader contract: the file is read in chunks (never whole; pipes work too), or an in-memory text is read in
// place. Lines end with "\n"; a "\r" before it (CRLF) is dropped; a UTF-8 BOM at the very start is skipped; a
// last line without "\n" is still a record; lines holding only JSON whitespace are skipped (they still count
// for line numbers). Every error is one distill::Error "<path>:<line>: <what>" — invalid JSON (with the
// parser's byte position in the line and its reason, e.g. ill-formed UTF-8 inside a string), a value that is
// not an object (when objects are required, the default), nesting deeper than max_depth, a line longer than
// max_line_bytes, and missing or mistyped fields that the caller asks for with the *_field helpers.
//
// Writer contract: each record is serialized first and then written with one write(2) sequence ending in
// "\n", so a killed writer leaves at most one partial line without "\n" at the end of the file.
// repair_jsonl_tail() cuts such a line off and returns the number of complete records, which is where a
// resumable job continues; flush_sync() makes the records written so far durable (fsync).
#pragma once
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "distill/core/error.hpp"

namespace distill::data {

inline constexpr size_t kDefaultMaxLineBytes = size_t{64} << 20;  // 64 MiB

struct JsonlOptions {
  size_t max_line_bytes = kDefaultMaxLineBytes;  // longer lines are an error (bytes before "\n", "\r" included)
  int max_depth = 512;                           // deeper nesting of arrays/objects is an error
  bool require_object = true;                    // every record must be a JSON object
};

namespace detail {

[[noreturn]] inline void jsonl_sys_fail(const std::string& path, const char* what) {
  throw Error(path + ": " + what + ": " + std::strerror(errno));
}

// A short, printable, valid-UTF-8 rendering of untrusted text for error messages: at most `max_bytes` of it,
// as a JSON string literal (control characters escaped, ill-formed UTF-8 replaced by U+FFFD).
inline std::string printable(std::string_view s, size_t max_bytes = 200) {
  const bool cut = s.size() > max_bytes;
  if (cut) s = s.substr(0, max_bytes);
  std::string out = nlohmann::json(std::string(s)).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (cut) out += "...";
  return out;
}

// Like printable() but without the quotes, for running text such as a parser's message.
inline std::string printable_message(std::string_view s, size_t max_bytes = 300) {
  const std::string q = printable(s, max_bytes);
  const size_t close = q.rfind('"');
  std::string out;
  for (size_t i = 1; i < close; ++i) {
    if (q[i] == '\\' && (q[i + 1] == '"' || q[i + 1] == '\\')) ++i;
    out.push_back(q[i]);
  }
  return out + q.substr(close + 1);
}

inline bool is_json_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

// Deepest nesting of arrays/objects in one JSON text (brackets inside strings do not count); stops counting
// once `limit` is exceeded. Lets us refuse absurd nesting before nlohmann builds it.
inline int json_depth_exceeds(std::string_view s, int limit) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (in_string) {
      if (c == '\\')
        ++i;
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > limit) return true;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return false;
}

inline const char* json_kind(const nlohmann::json& j) {
  if (j.is_number_integer() || j.is_number_unsigned()) return "an integer";
  if (j.is_number_float()) return "a number";
  if (j.is_string()) return "a string";
  if (j.is_object()) return "an object";
  if (j.is_array()) return "an array";
  if (j.is_boolean()) return "a boolean";
  return "null";
}

}  // namespace detail

// Reads JSONL records one by one: `while (r.next(obj)) { ... r.string_field(obj, "question") ... }`.
class JsonlReader {
 public:
  explicit JsonlReader(std::string path, JsonlOptions opts = {}) : path_(std::move(path)), opts_(opts) {
    fd_ = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) detail::jsonl_sys_fail(path_, "cannot open");
    struct stat st {};
    if (::fstat(fd_, &st) != 0) {
      close_fd();
      detail::jsonl_sys_fail(path_, "cannot stat");
    }
    if (S_ISDIR(st.st_mode)) {
      close_fd();
      throw Error(path_ + ": is a directory, not a JSONL file");
    }
    cap_ = std::min<size_t>(size_t{1} << 20, line_cap());
    cap_ = std::max<size_t>(cap_, 64);
    buf_.reset(new char[cap_]);
    data_ = buf_.get();
  }
  JsonlReader(std::string path, size_t max_line_bytes) : JsonlReader(std::move(path), with_max(max_line_bytes)) {}

  // Reads `text` in place (it must outlive the reader); `name` stands for the path in error messages.
  static JsonlReader from_memory(std::string_view text, std::string name = "<memory>", JsonlOptions opts = {}) {
    JsonlReader r;
    r.path_ = std::move(name);
    r.opts_ = opts;
    r.data_ = text.data();
    r.end_ = text.size();
    r.eof_ = true;
    return r;
  }

  JsonlReader(const JsonlReader&) = delete;
  JsonlReader& operator=(const JsonlReader&) = delete;
  JsonlReader(JsonlReader&& o) noexcept { swap(o); }
  JsonlReader& operator=(JsonlReader&& o) noexcept {
    if (this != &o) {
      close_fd();
      swap(o);
    }
    return *this;
  }
  ~JsonlReader() { close_fd(); }

  // The next non-blank line without its line ending (valid until the next call), or false at the end.
  bool next_line(std::string_view& line) {
    for (;;) {
      const char* nl = static_cast<const char*>(std::memchr(data_ + scan_, '\n', end_ - scan_));
      if (nl != nullptr) {
        const size_t stop = static_cast<size_t>(nl - data_);
        check_length(stop - pos_, line_no_ + 1);
        line = std::string_view(data_ + pos_, stop - pos_);
        pos_ = scan_ = stop + 1;
      } else {
        check_length(end_ - pos_, line_no_ + 1);
        if (!eof_) {
          refill();
          continue;
        }
        if (pos_ == end_) return false;
        line = std::string_view(data_ + pos_, end_ - pos_);
        pos_ = scan_ = end_;
      }
      ++line_no_;
      if (line_no_ == 1 && line.size() >= 3 && std::memcmp(line.data(), "\xEF\xBB\xBF", 3) == 0) line.remove_prefix(3);
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (std::all_of(line.begin(), line.end(), detail::is_json_space)) continue;
      return true;
    }
  }

  // Parses the next record into `out`; false at the end of the input.
  bool next(nlohmann::json& out) {
    std::string_view line;
    if (!next_line(line)) return false;
    if (detail::json_depth_exceeds(line, opts_.max_depth))
      fail("JSON nests deeper than " + std::to_string(opts_.max_depth) + " levels");
    try {
      out = nlohmann::json::parse(line.begin(), line.end(), nullptr, /*allow_exceptions=*/true,
                                  /*ignore_comments=*/false);
    } catch (const nlohmann::json::parse_error& e) {
      // "[json.exception.parse_error.101] parse error at line 1, column 7: syntax error while parsing value - X"
      std::string msg = e.what();
      for (const char* cut : {"] ", ": ", " - "}) {
        const size_t p = msg.find(cut);
        if (p != std::string::npos && p < 80) msg.erase(0, p + std::strlen(cut));
      }
      const bool utf8 = msg.find("UTF-8") != std::string::npos;
      fail(std::string(utf8 ? "invalid UTF-8 in the JSON text" : "invalid JSON") + " at byte " +
           std::to_string(e.byte) + " of the line: " + detail::printable_message(msg));
    } catch (const nlohmann::json::exception& e) {  // e.g. out_of_range 406: a number beyond double's range
      std::string msg = e.what();
      const size_t p = msg.find("] ");
      if (p != std::string::npos && p < 80) msg.erase(0, p + 2);
      fail("invalid JSON: " + detail::printable_message(msg));
    }
    if (opts_.require_object && !out.is_object())
      fail(std::string("expected a JSON object, got ") + detail::json_kind(out));
    return true;
  }

  // 1-based number of the line last returned (0 before the first).
  int64_t line_number() const { return line_no_; }
  const std::string& path() const { return path_; }
  std::string where() const { return path_ + ":" + std::to_string(line_no_); }
  [[noreturn]] void fail(const std::string& what) const { throw Error(where() + ": " + what); }

  // Field accessors for the record last read: a missing field or one of another type is an error naming the
  // file, line, key and the type found.
  const nlohmann::json& field(const nlohmann::json& obj, std::string_view key) const {
    if (!obj.is_object()) fail(std::string("expected a JSON object, got ") + detail::json_kind(obj));
    const auto it = obj.find(std::string(key));
    if (it == obj.end()) fail("missing field " + detail::printable(key));
    return *it;
  }
  const std::string& string_field(const nlohmann::json& obj, std::string_view key) const {
    const auto& v = field(obj, key);
    if (!v.is_string()) wrong_type(key, "a string", v);
    return v.get_ref<const std::string&>();
  }
  int64_t int_field(const nlohmann::json& obj, std::string_view key) const {
    const auto& v = field(obj, key);
    if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
      fail("field " + detail::printable(key) + " is out of the int64 range");
    if (!v.is_number_integer()) wrong_type(key, "an integer", v);
    return v.get<int64_t>();
  }
  double number_field(const nlohmann::json& obj, std::string_view key) const {
    const auto& v = field(obj, key);
    if (!v.is_number()) wrong_type(key, "a number", v);
    return v.get<double>();
  }
  bool bool_field(const nlohmann::json& obj, std::string_view key) const {
    const auto& v = field(obj, key);
    if (!v.is_boolean()) wrong_type(key, "a boolean", v);
    return v.get<bool>();
  }

 private:
  JsonlReader() = default;
  static JsonlOptions with_max(size_t max_line_bytes) {
    JsonlOptions o;
    o.max_line_bytes = max_line_bytes;
    return o;
  }
  [[noreturn]] void wrong_type(std::string_view key, const char* want, const nlohmann::json& got) const {
    fail("field " + detail::printable(key) + " must be " + want + ", got " + detail::json_kind(got));
  }
  void check_length(size_t len, int64_t line) const {
    if (len > opts_.max_line_bytes)
      throw Error(path_ + ":" + std::to_string(line) + ": line is longer than the limit of " +
                  std::to_string(opts_.max_line_bytes) + " bytes");
  }
  // Moves the unread rest to the front, grows the buffer when a line does not fit, and reads more.
  // Buffer bytes a line may need (the limit plus CR LF), saturating for "unlimited" limits near SIZE_MAX.
  size_t line_cap() const { return opts_.max_line_bytes > SIZE_MAX - 2 ? SIZE_MAX : opts_.max_line_bytes + 2; }
  void refill() {
    if (pos_ > 0) {
      std::memmove(buf_.get(), buf_.get() + pos_, end_ - pos_);
      end_ -= pos_;
      scan_ -= pos_;
      pos_ = 0;
    }
    scan_ = end_;
    if (end_ == cap_) {  // the pending line fills the buffer but is within the limit: grow
      const size_t cap = std::max(std::min(cap_ > SIZE_MAX / 2 ? SIZE_MAX : cap_ * 2, line_cap()), end_ + 1);
      std::unique_ptr<char[]> nb(new char[cap]);
      std::memcpy(nb.get(), buf_.get(), end_);
      buf_ = std::move(nb);
      cap_ = cap;
      data_ = buf_.get();
    }
    for (;;) {
      const ssize_t n = ::read(fd_, buf_.get() + end_, cap_ - end_);
      if (n < 0) {
        if (errno == EINTR) continue;
        detail::jsonl_sys_fail(path_, "read failed");
      }
      if (n == 0) eof_ = true;
      end_ += static_cast<size_t>(n);
      return;
    }
  }
  void close_fd() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  void swap(JsonlReader& o) noexcept {
    std::swap(path_, o.path_);
    std::swap(opts_, o.opts_);
    std::swap(fd_, o.fd_);
    std::swap(buf_, o.buf_);
    std::swap(cap_, o.cap_);
    std::swap(data_, o.data_);
    std::swap(pos_, o.pos_);
    std::swap(scan_, o.scan_);
    std::swap(end_, o.end_);
    std::swap(eof_, o.eof_);
    std::swap(line_no_, o.line_no_);
  }

  std::string path_;
  JsonlOptions opts_;
  int fd_ = -1;
  std::unique_ptr<char[]> buf_;  // file mode only
  size_t cap_ = 0;
  const char* data_ = "";  // buf_ or the caller's text
  size_t pos_ = 0;         // start of the unread part
  size_t scan_ = 0;        // [pos_, scan_) is known to hold no "\n"
  size_t end_ = 0;         // end of valid data
  bool eof_ = false;
  int64_t line_no_ = 0;
};

// Calls fn(obj) or fn(obj, reader) for every record of a JSONL file.
template <class F>
void for_each_jsonl(const std::string& path, F&& fn, JsonlOptions opts = {}) {
  JsonlReader reader(path, opts);
  nlohmann::json obj;
  while (reader.next(obj)) {
    if constexpr (std::is_invocable_v<F&, nlohmann::json&, const JsonlReader&>)
      fn(obj, static_cast<const JsonlReader&>(reader));
    else
      fn(obj);
  }
}

// Appends JSON records, one per line. A file opened for appending must end with a complete line (run
// repair_jsonl_tail() first after a crash), so that a new record never glues onto a torn one.
class JsonlWriter {
 public:
  JsonlWriter(std::string path, bool append) : path_(std::move(path)) {
    struct stat st {};
    const bool existed = ::stat(path_.c_str(), &st) == 0;
    const int flags = O_RDWR | O_CREAT | O_CLOEXEC | (append ? O_APPEND : O_TRUNC);
    fd_ = ::open(path_.c_str(), flags, 0644);
    if (fd_ < 0) detail::jsonl_sys_fail(path_, "cannot open for writing");
    if (append && existed && S_ISREG(st.st_mode) && st.st_size > 0) {
      char last = 0;
      if (::pread(fd_, &last, 1, st.st_size - 1) != 1) {
        const int saved = errno;
        close_fd();
        errno = saved;
        detail::jsonl_sys_fail(path_, "cannot read the last byte");
      }
      if (last != '\n') {
        close_fd();
        throw Error(path_ + ": ends with a partial line; call repair_jsonl_tail() before appending");
      }
    }
    if (!existed) sync_parent_dir();
  }
  JsonlWriter(const JsonlWriter&) = delete;
  JsonlWriter& operator=(const JsonlWriter&) = delete;
  ~JsonlWriter() { close_fd(); }

  // Serializes `record` (ill-formed UTF-8 in a string is an error, not silently replaced) and appends it.
  void write(const nlohmann::json& record) {
    std::string line;
    try {
      line = record.dump(-1, ' ', false, nlohmann::json::error_handler_t::strict);
    } catch (const nlohmann::json::exception& e) {
      throw Error(path_ + ": cannot write record " + std::to_string(records_ + 1) + ": " + e.what());
    }
    line.push_back('\n');
    write_all(line);
    ++records_;
  }

  // Makes everything written so far durable.
  void flush_sync() {
    if (fd_ < 0) throw Error(path_ + ": writer is closed");
    if (::fsync(fd_) != 0) detail::jsonl_sys_fail(path_, "fsync failed");
  }

  // fsync and close; errors are reported (the destructor closes silently).
  void close() {
    if (fd_ < 0) return;
    flush_sync();
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) detail::jsonl_sys_fail(path_, "close failed");
  }

  int64_t records_written() const { return records_; }
  const std::string& path() const { return path_; }

 private:
  void write_all(std::string_view bytes) {
    if (fd_ < 0) throw Error(path_ + ": writer is closed");
    size_t done = 0;
    while (done < bytes.size()) {
      const ssize_t n = ::write(fd_, bytes.data() + done, bytes.size() - done);
      if (n < 0) {
        if (errno == EINTR) continue;
        detail::jsonl_sys_fail(path_, "write failed");
      }
      done += static_cast<size_t>(n);
    }
  }
  void sync_parent_dir() {
    const auto slash = path_.find_last_of('/');
    const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path_.substr(0, slash));
    const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      ::fsync(dfd);
      ::close(dfd);
    }
  }
  void close_fd() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  std::string path_;
  int fd_ = -1;
  int64_t records_ = 0;
};

// For resuming after a killed writer: cuts a partial last line (bytes after the last "\n") off the file,
// fsyncs, and returns the number of complete non-blank lines (records). The last complete record must be valid
// JSON (a torn write never produces one that is not); if it is not, the file is damaged some other way and
// this throws rather than guess. A missing file is an error.
inline int64_t repair_jsonl_tail(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) detail::jsonl_sys_fail(path, "cannot open");
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) detail::jsonl_sys_fail(path, "cannot stat");
  if (!S_ISREG(st.st_mode)) throw Error(path + ": not a regular file");
  const auto size = static_cast<uint64_t>(st.st_size);

  constexpr size_t kChunk = size_t{1} << 20;
  std::unique_ptr<char[]> buf(new char[kChunk]);
  auto read_at = [&](uint64_t off, size_t n) {
    size_t done = 0;
    while (done < n) {
      const ssize_t r = ::pread(fd, buf.get() + done, n - done, static_cast<off_t>(off + done));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) detail::jsonl_sys_fail(path, "read failed");
      done += static_cast<size_t>(r);
    }
  };

  // One forward pass: count complete non-blank lines and remember where the last of them starts.
  int64_t records = 0, lines = 0, last_line = 0;
  uint64_t keep = 0;                   // bytes up to and including the last "\n"
  uint64_t last_start = 0, start = 0;  // start of the last complete non-blank line / of the current line
  bool content = false, bom = false;
  for (uint64_t off = 0; off < size; off += kChunk) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(kChunk, size - off));
    read_at(off, n);
    if (off == 0) bom = n >= 3 && std::memcmp(buf.get(), "\xEF\xBB\xBF", 3) == 0;
    for (size_t i = (off == 0 && bom) ? 3 : 0; i < n; ++i) {
      const char c = buf[i];
      if (c == '\n') {
        ++lines;
        if (content) {
          ++records;
          last_start = start;
          last_line = lines;
        }
        content = false;
        start = keep = off + i + 1;
      } else if (!content && !detail::is_json_space(c)) {
        content = true;
      }
    }
  }

  if (records > 0) {  // the last complete record must parse
    const uint64_t from = (last_start == 0 && bom) ? 3 : last_start;
    const uint64_t len = keep - from;
    if (len <= kDefaultMaxLineBytes) {
      std::string text(static_cast<size_t>(len), '\0');
      size_t done = 0;
      while (done < text.size()) {
        const ssize_t r = ::pread(fd, text.data() + done, text.size() - done, static_cast<off_t>(from + done));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) detail::jsonl_sys_fail(path, "read failed");
        done += static_cast<size_t>(r);
      }
      if (!nlohmann::json::accept(text))
        throw Error(path + ":" + std::to_string(last_line) +
                    ": the last complete line is not valid JSON; the file is damaged beyond a torn final write");
    }
  }
  if (keep < size) {
    if (::ftruncate(fd, static_cast<off_t>(keep)) != 0) detail::jsonl_sys_fail(path, "cannot truncate");
    if (::fsync(fd) != 0) detail::jsonl_sys_fail(path, "fsync failed");
  }
  return records;
}

}  // namespace distill::data
