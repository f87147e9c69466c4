// flowgraph-run: run a flow exported by `flowgraph export` from C++ (libtorch).
//
//   flowgraph-run MODEL info
//   flowgraph-run MODEL sample [-n 16] [-t 1.0] [--seed 0] [--noise eps.bin] [-o grid.ppm]
//                              [--raw images.bin] [--nrow K]
//   flowgraph-run MODEL bpd IMAGES.bin [--seed 0] [--noise noise.bin] [--out bpd.bin]
//
// MODEL is a TorchScript file (.pt, `flowgraph export --format torchscript`) or an
// AOTInductor archive (.pt2, `flowgraph export --format export --aoti`).
// Files are raw little-endian arrays without header: images uint8 N×C×H×W (float32 for
// continuous data), noise float32 N×latent_dim (sample) or N×noise_dim (bpd), bpd float32 N.
// Without --noise, noise comes from a generator seeded --seed: `sample` then equals
// `flowgraph sample CKPT -n N -t T --seed S` (TorchScript only; .pt2 needs --noise or
// draws torch::randn after torch::manual_seed).
#include <torch/script.h>
#include <torch/torch.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <cmath>
#include <cstdint>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

struct Info {
  std::vector<int64_t> data_shape;
  int64_t bits = 0, latent_dim = 0, noise_dim = 0;
  std::string spec_hash;
};

// The two directions behind one interface: TorchScript methods or AOTInductor models.
class Model {
 public:
  virtual ~Model() = default;
  virtual Info info() = 0;
  // (images, float samples) from standard-normal eps [N, latent_dim]
  virtual std::vector<at::Tensor> sample_from_noise(const at::Tensor& eps, double t) = 0;
  virtual at::Tensor sample_seeded(int64_t n, double t, int64_t seed) {
    torch::manual_seed(seed);
    return sample_from_noise(torch::randn({n, info().latent_dim}), t)[0];
  }
  // bits/dim [N]; noise [N, noise_dim] (ignored when noise_dim == 0)
  virtual at::Tensor bits_per_dim(const at::Tensor& x, const at::Tensor& noise) = 0;
  virtual at::Tensor bits_per_dim_seeded(const at::Tensor& x, int64_t seed) {
    torch::manual_seed(seed);
    return bits_per_dim(x, torch::randn({x.size(0), info().noise_dim}));
  }
};

class ScriptModel : public Model {
 public:
  explicit ScriptModel(const std::string& path) {
    torch::jit::ExtraFilesMap extra{{"flowgraph.json", ""}};
    m_ = torch::jit::load(path, torch::kCPU, extra);
    m_.eval();
    json_ = extra["flowgraph.json"];
  }
  Info info() override {
    Info i;
    for (auto v : m_.attr("data_shape").toIntList()) i.data_shape.push_back(v);
    i.bits = m_.attr("bits").toInt();
    i.latent_dim = m_.attr("latent_dim").toInt();
    i.noise_dim = m_.attr("noise_dim").toInt();
    auto p = json_.find("\"spec_hash\": \"");
    if (p != std::string::npos) i.spec_hash = json_.substr(p + 14, 16);
    return i;
  }
  std::vector<at::Tensor> sample_from_noise(const at::Tensor& eps, double t) override {
    auto out = m_.get_method("sample_from_noise")({eps, t}).toTuple();
    return {out->elements()[0].toTensor(), out->elements()[1].toTensor()};
  }
  at::Tensor sample_seeded(int64_t n, double t, int64_t seed) override {
    return m_.get_method("sample")({n, t, seed}).toTensor();
  }
  at::Tensor bits_per_dim(const at::Tensor& x, const at::Tensor& noise) override {
    c10::IValue nz = info().noise_dim > 0 ? c10::IValue(noise) : c10::IValue();
    return m_.get_method("bits_per_dim")({x, nz}).toTensor();
  }
  at::Tensor bits_per_dim_seeded(const at::Tensor& x, int64_t seed) override {
    return m_.get_method("bits_per_dim_seeded")({x, seed}).toTensor();
  }

 private:
  torch::jit::script::Module m_;
  std::string json_;
};

std::vector<int64_t> parse_ints(const std::string& s) {
  std::vector<int64_t> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(std::stoll(item));
  return out;
}

class AotiModel : public Model {
 public:
  explicit AotiModel(const std::string& path) : path_(path) {}
  Info info() override {
    auto meta = loader("sample", "density").get_metadata();
    Info i;
    i.data_shape = parse_ints(meta.at("flowgraph.data_shape"));
    i.bits = std::stoll(meta.at("flowgraph.bits"));
    i.latent_dim = std::stoll(meta.at("flowgraph.latent_dim"));
    i.noise_dim = std::stoll(meta.at("flowgraph.noise_dim"));
    i.spec_hash = meta.at("flowgraph.spec_hash");
    return i;
  }
  std::vector<at::Tensor> sample_from_noise(const at::Tensor& eps, double t) override {
    return loader("sample").run({eps, torch::tensor(static_cast<float>(t))});
  }
  at::Tensor bits_per_dim(const at::Tensor& x, const at::Tensor& noise) override {
    std::vector<at::Tensor> in{x};
    if (info().noise_dim > 0) in.push_back(noise);
    return loader("density").run(in)[1];
  }

 private:
  torch::inductor::AOTIModelPackageLoader& loader(const std::string& name,
                                                  const std::string& fallback = "") {
    auto it = loaders_.find(name);
    if (it != loaders_.end()) return *it->second;
    try {
      loaders_[name] = std::make_unique<torch::inductor::AOTIModelPackageLoader>(path_, name);
      return *loaders_[name];
    } catch (const std::exception&) {
      if (fallback.empty()) throw;
      return loader(fallback);
    }
  }
  std::string path_;
  std::map<std::string, std::unique_ptr<torch::inductor::AOTIModelPackageLoader>> loaders_;
};

std::vector<char> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + path);
  return std::vector<char>(std::istreambuf_iterator<char>(f), {});
}

void write_file(const std::string& path, const void* data, size_t bytes) {
  std::ofstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot write " + path);
  f.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
}

// float32 rows of `width` from a raw file; `rows` < 0: as many as the file holds
at::Tensor read_rows(const std::string& path, int64_t width, int64_t rows) {
  auto bytes = read_file(path);
  int64_t row_bytes = width * 4;
  if (width == 0 || bytes.size() % row_bytes != 0)
    throw std::runtime_error(path + ": size " + std::to_string(bytes.size()) +
                             " is not a multiple of " + std::to_string(row_bytes) +
                             " bytes (float32 rows of " + std::to_string(width) + ")");
  int64_t n = static_cast<int64_t>(bytes.size()) / row_bytes;
  if (rows >= 0 && n != rows)
    throw std::runtime_error(path + " holds " + std::to_string(n) + " rows; expected " +
                             std::to_string(rows));
  return torch::from_blob(bytes.data(), {n, width}, torch::kFloat32).clone();
}

// images [N, C, H, W] (values 0..2^bits-1) -> binary PPM grid, gray replicated to RGB
void write_ppm(const std::string& path, const at::Tensor& images, int64_t bits, int64_t nrow) {
  auto x = images.to(torch::kFloat64);
  if (bits != 8) x = x * (255.0 / (std::pow(2.0, bits) - 1.0));
  x = x.round().clamp(0, 255).to(torch::kUInt8).contiguous();
  int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3), pad = 2;
  int64_t cols = nrow > 0 ? nrow : std::max<int64_t>(1, std::ceil(std::sqrt(double(n))));
  int64_t rows = (n + cols - 1) / cols;
  int64_t gh = rows * (h + pad) + pad, gw = cols * (w + pad) + pad;
  std::vector<uint8_t> grid(gh * gw * 3, 255);
  auto a = x.accessor<uint8_t, 4>();
  for (int64_t i = 0; i < n; ++i) {
    int64_t top = pad + (i / cols) * (h + pad), left = pad + (i % cols) * (w + pad);
    for (int64_t y = 0; y < h; ++y)
      for (int64_t q = 0; q < w; ++q)
        for (int64_t k = 0; k < 3; ++k)
          grid[((top + y) * gw + left + q) * 3 + k] = a[i][c == 3 ? k : 0][y][q];
  }
  std::ofstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot write " + path);
  f << "P6\n" << gw << " " << gh << "\n255\n";
  f.write(reinterpret_cast<const char*>(grid.data()), static_cast<std::streamsize>(grid.size()));
}

int usage() {
  std::cerr << "usage: flowgraph-run MODEL.pt|MODEL.pt2 info\n"
               "       flowgraph-run MODEL sample [-n 16] [-t 1.0] [--seed 0] "
               "[--noise eps.bin] [-o grid.ppm] [--raw images.bin] [--nrow K]\n"
               "       flowgraph-run MODEL bpd IMAGES.bin [--seed 0] [--noise noise.bin] "
               "[--out bpd.bin]\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) return usage();
  std::string model_path = argv[1], cmd = argv[2], positional;
  std::map<std::string, std::string> opt;
  for (int i = 3; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("-", 0) == 0) {
      if (i + 1 >= argc) return usage();
      opt[a] = argv[++i];
    } else if (positional.empty()) {
      positional = a;
    } else {
      return usage();
    }
  }
  auto get = [&](const std::string& s, const std::string& l, const std::string& d) {
    if (opt.count(s)) return opt[s];
    if (opt.count(l)) return opt[l];
    return d;
  };
  try {
    torch::NoGradGuard no_grad;
    std::unique_ptr<Model> model;
    bool aoti = model_path.size() > 4 && model_path.substr(model_path.size() - 4) == ".pt2";
    if (aoti) model = std::make_unique<AotiModel>(model_path);
    else model = std::make_unique<ScriptModel>(model_path);
    Info info = model->info();
    int64_t dims = 1;
    for (auto s : info.data_shape) dims *= s;
    int64_t seed = std::stoll(get("--seed", "--seed", "0"));

    if (cmd == "info") {
      std::cout << "spec_hash " << info.spec_hash << "\ndata_shape";
      for (auto s : info.data_shape) std::cout << " " << s;
      std::cout << "\nbits " << info.bits << "\nlatent_dim " << info.latent_dim
                << "\nnoise_dim " << info.noise_dim << "\n";
      return 0;
    }
    if (cmd == "sample") {
      double t = std::stod(get("-t", "--temperature", "1.0"));
      int64_t n = std::stoll(get("-n", "--num", "-1"));
      at::Tensor images;
      if (opt.count("--noise")) {
        auto eps = read_rows(opt["--noise"], info.latent_dim, n);
        images = model->sample_from_noise(eps, t)[0];
      } else {
        images = model->sample_seeded(n < 0 ? 16 : n, t, seed);
      }
      images = images.contiguous();
      if (opt.count("--raw"))
        write_file(opt["--raw"], images.data_ptr(), images.numel() * images.element_size());
      if (opt.count("-o") || opt.count("--output")) {
        if (info.bits <= 0 || info.data_shape.size() != 3)
          throw std::runtime_error("-o needs image data with bits; use --raw");
        write_ppm(get("-o", "--output", ""), images, info.bits,
                  std::stoll(get("--nrow", "--nrow", "0")));
      }
      std::cout << "sampled " << images.size(0) << " images, T=" << t << "\n";
      return 0;
    }
    if (cmd == "bpd") {
      if (positional.empty()) return usage();
      auto bytes = read_file(positional);
      int64_t item = info.bits > 0 ? 1 : 4;
      if (bytes.size() % (dims * item) != 0)
        throw std::runtime_error(positional + ": size is not a multiple of one image (" +
                                 std::to_string(dims * item) + " bytes)");
      int64_t n = static_cast<int64_t>(bytes.size()) / (dims * item);
      std::vector<int64_t> shape{n};
      shape.insert(shape.end(), info.data_shape.begin(), info.data_shape.end());
      auto x = torch::from_blob(bytes.data(), shape,
                                info.bits > 0 ? torch::kUInt8 : torch::kFloat32).clone();
      at::Tensor bpd;
      if (opt.count("--noise")) {
        bpd = model->bits_per_dim(x, read_rows(opt["--noise"], info.noise_dim, n));
      } else {
        bpd = model->bits_per_dim_seeded(x, seed);
      }
      bpd = bpd.to(torch::kFloat32).contiguous();
      if (opt.count("--out")) write_file(opt["--out"], bpd.data_ptr(), bpd.numel() * 4);
      std::cout.precision(6);
      std::cout << std::fixed << "bits/dim " << bpd.mean().item<double>() << " over " << n
                << " images\n";
      return 0;
    }
    return usage();
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
