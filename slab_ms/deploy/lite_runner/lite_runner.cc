// Minimal MindSpore Lite C++ runner. Two modes:
//   lite_runner MODEL.mindir IN.npy OUT.npy [--device cpu|gpu|ascend] [--threads N] [--cpus 0,1] [--verbose]
//                                           [--repeat N] [--profile]
//   lite_runner MODEL.mindir --serve [--device ...] [--threads N] [--cpus 2,3] [--verbose]
// --cpus: the CPUs the process and the threads it starts run on (sched_setaffinity). Lite 2.0 binds its
// kernel threads itself, the i-th to CPU i: give it the first CPUs.
// One batch: IN.npy is float32, C order, little endian; its shape (batch included) is set with
// Model::Resize. OUT.npy: the first model output, float32. Prints one JSON line {"input_shape":..,
// "output_shape":..} (with --repeat N, "predict_ms" and "predict_ms_median": the mean and the median of N
// timed Predict calls after the first; with --profile, "profile": per op type, ms per Predict and kernels
// per Predict, and the 30 slowest (type, node name) pairs, from Lite's kernel callbacks, over max(N, 1) more
// calls; a kernel Lite adds, such as a layout Transpose, carries the name of the node it serves).
// --serve: the model is built once, then batches are read from stdin and answered on stdout until stdin
// ends (exit 0). All integers little endian:
//   request:  "SLAB" u32 ndim, ndim x i64 dims, prod(dims) x f32 (C order)
//   answer:   "SLAB" u32 ndim, ndim x i64 dims, f64 predict_ms, prod(dims) x f32 (the first output)
// A batch with another shape than the last one is Resize'd to (only the batch may differ from the model's).
// Any failure, in either mode: one line "error: ..." on stderr, exit code 1 (in --serve nothing more is
// written to stdout).
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "include/api/context.h"
#include "include/api/model.h"
#include "include/api/status.h"
#include "include/api/types.h"

namespace {
bool g_verbose = std::getenv("LITE_RUNNER_VERBOSE") != nullptr;
void Stage(const char *s) { if (g_verbose) std::cerr << "[lite_runner] " << s << std::endl; }
[[noreturn]] void Fail(const std::string &msg) {
  std::string one = msg;
  for (auto &c : one) if (c == '\n' || c == '\r') c = ' ';
  std::cerr << "error: " << one << std::endl;
  std::exit(1);
}

std::string ShapeStr(const std::vector<int64_t> &s) {
  std::ostringstream o;
  o << "[";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? "," : "") << s[i];
  o << "]";
  return o.str();
}

// Reads a version 1/2/3 .npy holding '<f4' C-order data.
std::vector<float> ReadNpy(const std::string &path, std::vector<int64_t> *shape) {
  std::ifstream f(path, std::ios::binary);
  if (!f) Fail("cannot open input " + path);
  char magic[6];
  f.read(magic, 6);
  if (!f || std::memcmp(magic, "\x93NUMPY", 6) != 0) Fail(path + " is not a .npy file");
  unsigned char ver[2];
  f.read(reinterpret_cast<char *>(ver), 2);
  uint32_t hlen = 0;
  if (ver[0] == 1) {
    unsigned char b[2];
    f.read(reinterpret_cast<char *>(b), 2);
    hlen = b[0] | (b[1] << 8);
  } else {
    unsigned char b[4];
    f.read(reinterpret_cast<char *>(b), 4);
    hlen = b[0] | (b[1] << 8) | (b[2] << 16) | (static_cast<uint32_t>(b[3]) << 24);
  }
  std::string h(hlen, '\0');
  f.read(&h[0], hlen);
  if (!f) Fail(path + ": truncated .npy header");
  if (h.find("'descr': '<f4'") == std::string::npos) Fail(path + ": dtype must be float32 ('<f4')");
  if (h.find("'fortran_order': False") == std::string::npos) Fail(path + ": must be C order");
  auto p = h.find("'shape': (");
  if (p == std::string::npos) Fail(path + ": no shape in .npy header");
  p += 10;
  auto q = h.find(')', p);
  std::string dims = h.substr(p, q - p);
  shape->clear();
  std::stringstream ss(dims);
  std::string tok;
  int64_t n = 1;
  while (std::getline(ss, tok, ',')) {
    if (tok.find_first_not_of(' ') == std::string::npos) continue;
    int64_t d = std::stoll(tok);
    shape->push_back(d);
    n *= d;
  }
  std::vector<float> data(n);
  f.read(reinterpret_cast<char *>(data.data()), n * sizeof(float));
  if (!f) Fail(path + ": truncated data");
  return data;
}

void WriteNpy(const std::string &path, const float *data, const std::vector<int64_t> &shape) {
  std::string dims = "(";
  int64_t n = 1;
  for (auto d : shape) { dims += std::to_string(d) + ","; n *= d; }
  dims += ")";
  std::string h = "{'descr': '<f4', 'fortran_order': False, 'shape': " + dims + ", }";
  size_t total = 10 + h.size() + 1;
  h += std::string((64 - total % 64) % 64, ' ') + "\n";
  std::ofstream f(path, std::ios::binary);
  if (!f) Fail("cannot write " + path);
  f.write("\x93NUMPY\x01\x00", 8);
  uint16_t hl = static_cast<uint16_t>(h.size());
  unsigned char b[2] = {static_cast<unsigned char>(hl & 0xff), static_cast<unsigned char>(hl >> 8)};
  f.write(reinterpret_cast<char *>(b), 2);
  f.write(h.data(), h.size());
  f.write(reinterpret_cast<const char *>(data), n * sizeof(float));
  if (!f) Fail("write failed: " + path);
}

// Reads n bytes from fd. Returns false on end of input before the first byte (when at_start may be
// accepted by the caller); a stream that ends part-way is an error.
bool ReadAll(int fd, void *buf, size_t n, const char *what) {
  auto *p = static_cast<char *>(buf);
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, p + got, n - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) Fail(std::string("reading ") + what + " from stdin: " + std::strerror(errno));
    if (r == 0) {
      if (got == 0) return false;
      Fail(std::string("stdin ended inside ") + what + " (" + std::to_string(got) + " of " + std::to_string(n) +
           " bytes)");
    }
    got += static_cast<size_t>(r);
  }
  return true;
}

void WriteAll(int fd, const void *buf, size_t n) {
  auto *p = static_cast<const char *>(buf);
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) Fail(std::string("writing the answer to stdout: ") + std::strerror(errno));
    p += w;
    n -= static_cast<size_t>(w);
  }
}

// The model's input shape against a batch's: the same rank, and only the batch (dim 0) may differ
// where the model's dims are known.
void CheckShape(const std::vector<int64_t> &model_shape, const std::vector<int64_t> &shape) {
  bool ok = model_shape.size() == shape.size() && !shape.empty();
  for (size_t i = 1; ok && i < model_shape.size(); ++i) ok = model_shape[i] < 0 || model_shape[i] == shape[i];
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = shape[i] > 0;
  if (!ok) Fail("input shape " + ShapeStr(shape) + " does not match the model's input " + ShapeStr(model_shape) +
                " (only the batch may differ)");
}

// Sets the model's input to `shape` (Resize when it differs) and returns the input tensors.
std::vector<mindspore::MSTensor> InputsFor(mindspore::Model *model, const std::vector<int64_t> &shape,
                                           const std::vector<int64_t> &declared) {
  auto inputs = model->GetInputs();
  CheckShape(declared, shape);
  if (inputs[0].Shape() != shape) {
    Stage("resize");
    auto st = model->Resize(inputs, {shape});
    if (st != mindspore::kSuccess) Fail("Resize to " + ShapeStr(shape) + " failed: " + st.ToString());
    inputs = model->GetInputs();
  }
  int64_t n = 1;
  for (auto d : shape) n *= d;
  if (static_cast<size_t>(inputs[0].DataSize()) != static_cast<size_t>(n) * sizeof(float))
    Fail("input size mismatch: model " + std::to_string(inputs[0].DataSize()) + " bytes, batch " +
         std::to_string(n * sizeof(float)) + " bytes");
  return inputs;
}

const float *FirstOutput(const std::vector<mindspore::MSTensor> &outputs) {
  if (outputs.empty()) Fail("model produced no output");
  auto &out = outputs[0];
  if (out.DataType() != mindspore::DataType::kNumberTypeFloat32) Fail("output is not float32");
  auto data = reinterpret_cast<const float *>(out.Data().get());
  if (data == nullptr) Fail("output has no data");
  return data;
}

// Time per op type over `runs` Predict calls, through Lite's kernel callbacks (before/after each kernel).
std::string Profile(mindspore::Model *model, const std::vector<mindspore::MSTensor> &inputs, int runs) {
  struct Stat { double ms = 0; int64_t kernels = 0; };
  std::map<std::string, Stat> by_type;
  std::map<std::string, std::pair<std::string, double>> by_node;  // "type name" -> (type, ms)
  std::map<std::string, std::chrono::steady_clock::time_point> started;
  mindspore::MSKernelCallBack before = [&](const std::vector<mindspore::MSTensor> &,
                                           const std::vector<mindspore::MSTensor> &,
                                           const mindspore::MSCallBackParam &op) {
    started[op.node_name] = std::chrono::steady_clock::now();
    return true;
  };
  mindspore::MSKernelCallBack after = [&](const std::vector<mindspore::MSTensor> &,
                                          const std::vector<mindspore::MSTensor> &,
                                          const mindspore::MSCallBackParam &op) {
    auto it = started.find(op.node_name);
    if (it != started.end()) {
      auto &s = by_type[op.node_type];
      double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - it->second).count();
      s.ms += ms;
      s.kernels += 1;
      auto &n = by_node[op.node_type + " " + op.node_name];  // names repeat: a kernel Lite inserts has its node's
      n.first = op.node_type;
      n.second += ms;
    }
    return true;
  };
  auto t0 = std::chrono::steady_clock::now();
  for (int r = 0; r < runs; ++r) {
    std::vector<mindspore::MSTensor> o;
    if (model->Predict(inputs, &o, before, after) != mindspore::kSuccess) Fail("Predict failed in --profile");
  }
  double total = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / runs;
  std::ostringstream j;
  j << "{\"predict_ms\": " << total << ", \"ops\": {";
  bool first = true;
  for (auto &kv : by_type) {
    j << (first ? "" : ", ") << "\"" << kv.first << "\": {\"ms\": " << kv.second.ms / runs
      << ", \"kernels\": " << kv.second.kernels / runs << "}";
    first = false;
  }
  j << "}, \"slowest\": [";
  std::vector<std::pair<double, std::string>> nodes;
  for (auto &kv : by_node) nodes.emplace_back(kv.second.second / runs, kv.first);
  std::sort(nodes.rbegin(), nodes.rend());
  for (size_t i = 0; i < nodes.size() && i < 30; ++i) {
    std::string name;
    for (char c : nodes[i].second) if (c != '"' && c != '\\') name += c;
    j << (i ? ", " : "") << "[\"" << name << "\", \"" << by_node[nodes[i].second].first << "\", " << nodes[i].first
      << "]";
  }
  j << "]}";
  return j.str();
}

// --serve: answer batches from stdin until it ends.
void Serve(mindspore::Model *model, const std::vector<int64_t> &declared) {
  std::vector<mindspore::MSTensor> inputs = model->GetInputs();
  for (;;) {
    char magic[4];
    if (!ReadAll(0, magic, 4, "a request header")) return;   // stdin ended between requests: done
    if (std::memcmp(magic, "SLAB", 4) != 0) Fail("bad request on stdin (no SLAB header)");
    uint32_t ndim = 0;
    ReadAll(0, &ndim, 4, "a request header");
    if (ndim == 0 || ndim > 8) Fail("bad request on stdin: " + std::to_string(ndim) + " dimensions");
    std::vector<int64_t> shape(ndim);
    ReadAll(0, shape.data(), ndim * sizeof(int64_t), "a request header");
    for (auto d : shape)
      if (d <= 0 || d > (int64_t(1) << 31)) Fail("bad request on stdin: shape " + ShapeStr(shape));
    inputs = InputsFor(model, shape, declared);
    ReadAll(0, inputs[0].MutableData(), static_cast<size_t>(inputs[0].DataSize()), "a batch");
    std::vector<mindspore::MSTensor> outputs;
    auto t0 = std::chrono::steady_clock::now();
    auto st = model->Predict(inputs, &outputs);
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (st != mindspore::kSuccess) Fail("Predict failed on a batch of shape " + ShapeStr(shape) + ": " + st.ToString());
    const float *data = FirstOutput(outputs);
    auto oshape = outputs[0].Shape();
    std::string head("SLAB", 4);
    uint32_t ondim = static_cast<uint32_t>(oshape.size());
    head.append(reinterpret_cast<const char *>(&ondim), 4);
    int64_t n = 1;
    for (auto d : oshape) { head.append(reinterpret_cast<const char *>(&d), 8); n *= d; }
    head.append(reinterpret_cast<const char *>(&ms), 8);
    WriteAll(1, head.data(), head.size());
    WriteAll(1, data, static_cast<size_t>(n) * sizeof(float));
  }
}
}  // namespace

int main(int argc, char **argv) {
  bool serve = argc >= 3 && std::string(argv[2]) == "--serve";
  if (argc < (serve ? 3 : 4)) {
    std::cerr << "usage: lite_runner MODEL.mindir IN.npy OUT.npy [--device cpu|gpu|ascend] [--threads N] "
                 "[--cpus LIST] [--verbose] [--repeat N] [--profile]\n"
                 "       lite_runner MODEL.mindir --serve [--device cpu|gpu|ascend] [--threads N] [--cpus LIST] "
                 "[--verbose]"
              << std::endl;
    return 2;
  }
  std::string model_path = argv[1];
  std::string in_path = serve ? "" : argv[2], out_path = serve ? "" : argv[3];
  int threads = 2;
  bool verbose = false, profile = false;
  int repeat = 0;  // extra timed Predict calls (after the first one)
  std::string device = "cpu", cpus;
  for (int i = serve ? 3 : 4; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--device" && i + 1 < argc) device = argv[++i];
    else if (a == "--threads" && i + 1 < argc) threads = std::atoi(argv[++i]);
    else if (a == "--verbose") verbose = true;
    else if (a == "--repeat" && i + 1 < argc) repeat = std::atoi(argv[++i]);
    else if (a == "--profile") profile = true;
    else if (a == "--cpus" && i + 1 < argc) cpus = argv[++i];
    else Fail("unknown argument " + a);
  }
  if (!cpus.empty()) {  // before Lite starts a thread: they all inherit the mask
    cpu_set_t set;
    CPU_ZERO(&set);
    std::stringstream list(cpus);
    std::string item;
    while (std::getline(list, item, ',')) {
      char *end = nullptr;
      long cpu = std::strtol(item.c_str(), &end, 10);
      if (item.empty() || *end != '\0' || cpu < 0 || cpu >= CPU_SETSIZE) Fail("--cpus: not a CPU list: " + cpus);
      CPU_SET(static_cast<int>(cpu), &set);
    }
    if (sched_setaffinity(0, sizeof(set), &set) != 0) Fail("--cpus " + cpus + ": " + std::strerror(errno));
  }
  // Lite logs warnings and errors to stderr; keep only our one-line error unless --verbose or GLOG_v is set.
  // Lite reads GLOG_v when its libraries load, before main: set it and run this program again.
  if (!verbose && std::getenv("GLOG_v") == nullptr) {
    setenv("GLOG_v", "4", 1);
    execv("/proc/self/exe", argv);  // returns only on failure: then just go on with the logs
  }
  {
    std::ifstream t(model_path, std::ios::binary);
    if (!t) Fail("cannot open model " + model_path);
  }
  std::vector<int64_t> shape;
  std::vector<float> data;
  if (!serve) data = ReadNpy(in_path, &shape);

  auto context = std::make_shared<mindspore::Context>();
  context->SetThreadNum(threads);
  if (device == "gpu") {
    context->MutableDeviceInfo().push_back(std::make_shared<mindspore::GPUDeviceInfo>());
  } else if (device == "ascend") {
    context->MutableDeviceInfo().push_back(std::make_shared<mindspore::AscendDeviceInfo>());
  } else if (device != "cpu") {
    Fail("--device must be cpu, gpu or ascend, got " + device);
  }
  context->MutableDeviceInfo().push_back(std::make_shared<mindspore::CPUDeviceInfo>());  // ops the device lacks

  mindspore::Model model;
  Stage("build");
  auto st = model.Build(model_path, mindspore::ModelType::kMindIR, context);
  if (st != mindspore::kSuccess)
    Fail("MindSpore Lite could not build " + model_path + " (" + st.ToString() +
         "): not a MindIR, damaged, or with ops/version Lite 2.0 does not support (write MindSpore 2.10 "
         "exports with export.py --mindir-compat 2.0; --verbose shows Lite's log)");
  auto inputs = model.GetInputs();
  if (inputs.size() != 1) Fail("model has " + std::to_string(inputs.size()) + " inputs, expected 1");
  if (inputs[0].DataType() != mindspore::DataType::kNumberTypeFloat32) Fail("model input is not float32");
  const std::vector<int64_t> declared = inputs[0].Shape();
  if (serve) {
    Serve(&model, declared);
    return 0;
  }
  inputs = InputsFor(&model, shape, declared);
  std::memcpy(inputs[0].MutableData(), data.data(), data.size() * sizeof(float));
  std::vector<mindspore::MSTensor> outputs;
  Stage("predict");
  st = model.Predict(inputs, &outputs);
  if (st != mindspore::kSuccess) Fail("Predict failed: " + st.ToString());
  const float *out_data = FirstOutput(outputs);
  double avg_ms = -1, median_ms = -1;
  if (repeat > 0) {
    std::vector<double> ms;
    for (int r = 0; r < repeat; ++r) {
      std::vector<mindspore::MSTensor> o;
      auto t0 = std::chrono::steady_clock::now();
      if (model.Predict(inputs, &o) != mindspore::kSuccess) Fail("Predict failed in --repeat");
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    avg_ms = 0;
    for (double m : ms) avg_ms += m / repeat;
    std::sort(ms.begin(), ms.end());
    median_ms = repeat % 2 ? ms[repeat / 2] : (ms[repeat / 2 - 1] + ms[repeat / 2]) / 2;
  }
  std::string prof = profile ? Profile(&model, inputs, repeat > 0 ? repeat : 1) : std::string();
  WriteNpy(out_path, out_data, outputs[0].Shape());
  std::cout << "{\"input_shape\": " << ShapeStr(shape) << ", \"output_shape\": " << ShapeStr(outputs[0].Shape())
            << (avg_ms >= 0 ? ", \"predict_ms\": " + std::to_string(avg_ms) + ", \"predict_ms_median\": " +
                                  std::to_string(median_ms) : std::string())
            << (profile ? ", \"profile\": " + prof : std::string()) << "}" << std::endl;
  return 0;
}
