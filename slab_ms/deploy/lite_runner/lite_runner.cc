// Minimal MindSpore Lite C++ runner:
//   lite_runner MODEL.mindir IN.npy OUT.npy [--device cpu|gpu|ascend] [--threads N] [--verbose] [--repeat N]
// IN.npy: float32, C order, little endian; its shape (batch included) is set with Model::Resize.
// OUT.npy: first model output, float32. Prints one JSON line {"input_shape":..,"output_shape":..}.
// Any failure: one line "error: ..." on stderr, exit code 1.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <unistd.h>
#include <cstring>
#include <fstream>
#include <iostream>
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
}  // namespace

int main(int argc, char **argv) {
  if (argc < 4) {
    std::cerr << "usage: lite_runner MODEL.mindir IN.npy OUT.npy [--device cpu|gpu|ascend] [--threads N] "
                 "[--verbose] [--repeat N]" << std::endl;
    return 2;
  }
  std::string model_path = argv[1], in_path = argv[2], out_path = argv[3];
  int threads = 2;
  bool verbose = false;
  int repeat = 0;  // extra timed Predict calls (after the first one)
  std::string device = "cpu";
  for (int i = 4; i < argc; ++i) {
    if (std::string(argv[i]) == "--device" && i + 1 < argc) device = argv[++i];
    else if (std::string(argv[i]) == "--threads" && i + 1 < argc) threads = std::atoi(argv[++i]);
    else if (std::string(argv[i]) == "--verbose") verbose = true;
    else if (std::string(argv[i]) == "--repeat" && i + 1 < argc) repeat = std::atoi(argv[++i]);
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
  auto data = ReadNpy(in_path, &shape);

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
  {
    auto ms = inputs[0].Shape();
    bool ok = ms.size() == shape.size();
    for (size_t i = 1; ok && i < ms.size(); ++i) ok = ms[i] < 0 || ms[i] == shape[i];
    if (!ok) Fail("input shape " + ShapeStr(shape) + " does not match the model's input " + ShapeStr(ms) +
                  " (only the batch may differ)");
  }
  if (inputs[0].Shape() != shape) {
    Stage("resize");
    st = model.Resize(inputs, {shape});
    if (st != mindspore::kSuccess) Fail("Resize to " + ShapeStr(shape) + " failed: " + st.ToString());
    inputs = model.GetInputs();
  }
  if (inputs[0].DataType() != mindspore::DataType::kNumberTypeFloat32) Fail("model input is not float32");
  if (static_cast<size_t>(inputs[0].DataSize()) != data.size() * sizeof(float))
    Fail("input size mismatch: model " + std::to_string(inputs[0].DataSize()) + " bytes, file " +
         std::to_string(data.size() * sizeof(float)) + " bytes");
  std::memcpy(inputs[0].MutableData(), data.data(), data.size() * sizeof(float));
  std::vector<mindspore::MSTensor> outputs;
  Stage("predict");
  st = model.Predict(inputs, &outputs);
  if (st != mindspore::kSuccess) Fail("Predict failed: " + st.ToString());
  if (outputs.empty()) Fail("model produced no output");
  double avg_ms = -1;
  if (repeat > 0) {
    auto t0 = std::chrono::steady_clock::now();
    for (int r = 0; r < repeat; ++r) {
      std::vector<mindspore::MSTensor> o;
      if (model.Predict(inputs, &o) != mindspore::kSuccess) Fail("Predict failed in --repeat");
    }
    avg_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / repeat;
  }
  auto &out = outputs[0];
  if (out.DataType() != mindspore::DataType::kNumberTypeFloat32) Fail("output is not float32");
  auto out_data = reinterpret_cast<const float *>(out.Data().get());
  if (out_data == nullptr) Fail("output has no data");
  WriteNpy(out_path, out_data, out.Shape());
  std::cout << "{\"input_shape\": " << ShapeStr(shape) << ", \"output_shape\": " << ShapeStr(out.Shape())
            << (avg_ms >= 0 ? ", \"predict_ms\": " + std::to_string(avg_ms) : std::string()) << "}" << std::endl;
  return 0;
}
