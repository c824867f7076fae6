// textgen's float32 LSTM training loops as two TensorFlow ops, built on the user's machine by
// textgen/native_loops.py (g++ against the installed TensorFlow's headers, -march=native).
//
// Why C++: XLA's compiled loops spend ~40% of each loop outside its recurrent products (per-step
// dispatch, and the saved gates written by in-place updates that run on one thread). Here the units
// are shared out among TensorFlow's intra-op threads (Parts): each step, each thread does one product
// for its units' four gates (single-threaded Eigen, at the core's peak) and then their gate arithmetic,
// writing what the backward reads where it belongs; the threads meet once per step. The math is
// textgen/lstm_step.py's (a candidate block pre-scaled by 2, one sigmoid for every gate), batch-major
// throughout. BENCHMARKS.md, "Against PyTorch: where the training time goes", has the measurements.
#define EIGEN_USE_THREADS
#include "Eigen/Core"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "unsupported/Eigen/CXX11/Tensor"

namespace {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::errors::InvalidArgument;
using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstRowMajorMap = Eigen::Map<const RowMajor>;
using Columns = Eigen::Map<const RowMajor, 0, Eigen::OuterStride<>>;  // a block of columns of a wider matrix
using Row = Eigen::Map<Eigen::ArrayXf>;
using ConstRow = Eigen::Map<const Eigen::ArrayXf>;

constexpr int kGates = 4;  // input, forget, candidate, output: Keras's order

// The units split among the threads: each thread owns a run of units (all four gates of them), so that one
// product per thread and step gives it every gate it needs for its units' cell update, and the threads
// meet once per step.
struct Parts {
  int64_t size, count;
  Parts(int64_t units, int threads) {
    size = (units + threads - 1) / std::max(threads, 1);
    size = std::min(units, (size + 15) / 16 * 16);  // whole AVX-512 vectors
    count = (units + size - 1) / size;
  }
  int64_t first(int64_t part) const { return part * size; }
  int64_t units(int64_t part, int64_t all) const { return std::min(size, all - first(part)); }
};

// Runs part(0), ..., part(count - 1) on TensorFlow's intra-op threads and the calling one; returns when all
// have. A cost far above any block-size tradeoff gives each part its own task.
template <typename Part>
void ForEachPart(const Eigen::ThreadPoolDevice& device, int64_t count, Part part) {
  if (count == 1) return part(0);
  device.parallelFor(count, Eigen::TensorOpCost(0, 0, 1e9), [&](Eigen::Index begin, Eigen::Index end) {
    for (Eigen::Index p = begin; p < end; ++p) part(p);
  });
}

bool IsMatrix(const Tensor& t, int64_t rows, int64_t columns) {
  return t.dims() == 2 && t.dim_size(0) == rows && t.dim_size(1) == columns;
}

}  // namespace

REGISTER_OP("TextgenLstmForward")
    .Input("xw: float")         // (T, B, W >= 4U): the window's input part of z (x @ kernel + bias)
    .Input("h0: float")         // (B, U)
    .Input("c0: float")         // (B, U)
    .Input("recurrent: float")  // (U, 4U)
    .Attr("parts: int = 0")     // how many runs of units the threads share out; 0: one per intra-op thread
    .Output("h_all: float")     // (T + 1, B, U): h0, then h after each step
    .Output("c_all: float")     // (T + 1, B, U): c0, then c after each step
    .Output("s_all: float")     // (T, B, 4U): each step's gate sigmoids
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle checked;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &checked));
      for (int input = 1; input < 4; ++input) TF_RETURN_IF_ERROR(c->WithRank(c->input(input), 2, &checked));
      DimensionHandle steps;
      TF_RETURN_IF_ERROR(c->Add(c->Dim(c->input(0), 0), 1, &steps));
      auto batch = c->Dim(c->input(0), 1);
      auto units = c->Dim(c->input(3), 0);
      c->set_output(0, c->MakeShape({steps, batch, units}));
      c->set_output(1, c->MakeShape({steps, batch, units}));
      c->set_output(2, c->MakeShape({c->Dim(c->input(0), 0), batch, c->Dim(c->input(3), 1)}));
      return absl::OkStatus();
    })
    .Doc("textgen's LSTM forward recurrence over a window, saving what its backward reads. The candidate "
         "block of xw and recurrent is pre-scaled by 2 (textgen/lstm_step.py), so one sigmoid gives every gate.");

class TextgenLstmForward : public OpKernel {
 public:
  explicit TextgenLstmForward(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("parts", &parts_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& xw = context->input(0);
    const Tensor& h0 = context->input(1);
    const Tensor& c0 = context->input(2);
    const Tensor& recurrent = context->input(3);
    OP_REQUIRES(context,
                recurrent.dims() == 2 && recurrent.dim_size(0) > 0 &&
                    recurrent.dim_size(1) == kGates * recurrent.dim_size(0),
                InvalidArgument("recurrent must be (U, 4U) with U > 0, got ", recurrent.shape().DebugString()));
    const int64_t units = recurrent.dim_size(0), gates = kGates * units;
    OP_REQUIRES(context, xw.dims() == 3 && xw.dim_size(2) >= gates,
                InvalidArgument("xw must be (T, B, >= 4U), got ", xw.shape().DebugString()));
    const int64_t steps = xw.dim_size(0), batch = xw.dim_size(1), width = xw.dim_size(2);
    OP_REQUIRES(context, IsMatrix(h0, batch, units) && IsMatrix(c0, batch, units),
                InvalidArgument("h0 and c0 must be (B, U)"));
    Tensor *h_out, *c_out, *s_out;
    OP_REQUIRES_OK(context, context->allocate_output(0, TensorShape({steps + 1, batch, units}), &h_out));
    OP_REQUIRES_OK(context, context->allocate_output(1, TensorShape({steps + 1, batch, units}), &c_out));
    OP_REQUIRES_OK(context, context->allocate_output(2, TensorShape({steps, batch, gates}), &s_out));
    const auto& device = context->eigen_device<Eigen::ThreadPoolDevice>();
    const float* x_all = xw.flat<float>().data();
    float* h_all = h_out->flat<float>().data();
    float* c_all = c_out->flat<float>().data();
    float* s_all = s_out->flat<float>().data();
    std::copy_n(h0.flat<float>().data(), batch * units, h_all);
    std::copy_n(c0.flat<float>().data(), batch * units, c_all);
    const Parts parts(units, parts_ > 0 ? parts_ : device.numThreads());
    // Each part's columns of the recurrent kernel, its four gate blocks side by side: (U, 4 n).
    std::vector<RowMajor> weights(parts.count), z(parts.count);
    const float* recurrent_all = recurrent.flat<float>().data();
    for (int64_t p = 0; p < parts.count; ++p) {
      const int64_t first = parts.first(p), n = parts.units(p, units);
      weights[p].resize(units, kGates * n);
      z[p].resize(batch, kGates * n);
      for (int64_t k = 0; k < units; ++k)
        for (int g = 0; g < kGates; ++g)
          std::copy_n(recurrent_all + k * gates + g * units + first, n, weights[p].data() + (k * kGates + g) * n);
    }

    for (int64_t t = 0; t < steps; ++t) {
      const float* x = x_all + t * batch * width;
      float* s = s_all + t * batch * gates;
      const float* h_prev = h_all + t * batch * units;
      const float* c_prev = c_all + t * batch * units;
      float* c = c_all + (t + 1) * batch * units;
      float* h = h_all + (t + 1) * batch * units;
      ForEachPart(device, parts.count, [&](int64_t p) {
        const int64_t first = parts.first(p), n = parts.units(p, units);
        z[p].noalias() = ConstRowMajorMap(h_prev, batch, units) * weights[p];
        for (int64_t row = 0; row < batch; ++row) {
          const float* z_row = z[p].data() + row * kGates * n;
          float* sig = s + row * gates + first;  // gate g of unit first + j at sig[g * units + j]
          for (int g = 0; g < kGates; ++g)
            Row(sig + g * units, n) = (ConstRow(z_row + g * n, n) + ConstRow(x + row * width + g * units + first, n))
                                          .logistic();
          Row c_row(c + row * units + first, n);
          c_row = ConstRow(sig + units, n) * ConstRow(c_prev + row * units + first, n) +
                  ConstRow(sig, n) * (2.0f * ConstRow(sig + 2 * units, n) - 1.0f);
          Row(h + row * units + first, n) = ConstRow(sig + 3 * units, n) * c_row.tanh();
        }
      });
    }
  }

 private:
  int parts_;
};
REGISTER_KERNEL_BUILDER(Name("TextgenLstmForward").Device(tensorflow::DEVICE_CPU), TextgenLstmForward);

REGISTER_OP("TextgenLstmBackward")
    .Input("s_all: float")        // (T, B, 4U): the forward's gate sigmoids
    .Input("c_all: float")        // (T + 1, B, U): the forward's cell states
    .Input("d_outputs: float")    // (T, B, U): the gradient reaching each step's h from above
    .Input("dh: float")           // (B, U): the gradient reaching the last h
    .Input("dc: float")           // (B, U): the gradient reaching the last c
    .Input("recurrent_t: float")  // (width, U): the recurrent kernel transposed (not pre-scaled), zero rows
                                  // beyond 4U
    .Attr("width: int")           // dz's row width, >= 4U: the columns beyond 4U are zeros
    .Attr("parts: int = 0")       // as TextgenLstmForward's
    .Output("dz_all: float")      // (T, B, width): the gradient of each step's z (Keras's, not pre-scaled)
    .Output("dh0: float")         // (B, U)
    .Output("dc0: float")         // (B, U)
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle checked;
      for (int input : {0, 1, 2}) TF_RETURN_IF_ERROR(c->WithRank(c->input(input), 3, &checked));
      for (int input : {3, 4, 5}) TF_RETURN_IF_ERROR(c->WithRank(c->input(input), 2, &checked));
      int64_t width;
      TF_RETURN_IF_ERROR(c->GetAttr("width", &width));
      auto s_all = c->input(0);
      c->set_output(0, c->MakeShape({c->Dim(s_all, 0), c->Dim(s_all, 1), width}));
      c->set_output(1, c->input(3));
      c->set_output(2, c->input(4));
      return absl::OkStatus();
    })
    .Doc("The reverse recurrence of TextgenLstmForward: dz of every step and the gradients reaching h0 and c0.");

class TextgenLstmBackward : public OpKernel {
 public:
  explicit TextgenLstmBackward(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("width", &width_));
    OP_REQUIRES_OK(context, context->GetAttr("parts", &parts_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& s_in = context->input(0);
    const Tensor& c_in = context->input(1);
    const Tensor& d_outputs = context->input(2);
    const Tensor& recurrent_t = context->input(5);
    OP_REQUIRES(context, s_in.dims() == 3, InvalidArgument("s_all must be (T, B, 4U)"));
    const int64_t steps = s_in.dim_size(0), batch = s_in.dim_size(1), gates = s_in.dim_size(2);
    const int64_t units = gates / kGates;
    OP_REQUIRES(context, width_ >= gates, InvalidArgument("width must be at least 4U"));
    OP_REQUIRES(context, units > 0 && gates == kGates * units && IsMatrix(recurrent_t, width_, units),
                InvalidArgument("recurrent_t must be (width, U) for s_all's 4U"));
    OP_REQUIRES(context,
                c_in.shape() == TensorShape({steps + 1, batch, units}) &&
                    d_outputs.shape() == TensorShape({steps, batch, units}) &&
                    IsMatrix(context->input(3), batch, units) && IsMatrix(context->input(4), batch, units),
                InvalidArgument("c_all, d_outputs, dh and dc do not match s_all's shape"));
    Tensor *dz_out, *dh_out, *dc_out;
    OP_REQUIRES_OK(context, context->allocate_output(0, TensorShape({steps, batch, width_}), &dz_out));
    OP_REQUIRES_OK(context, context->allocate_output(1, TensorShape({batch, units}), &dh_out));
    OP_REQUIRES_OK(context, context->allocate_output(2, TensorShape({batch, units}), &dc_out));
    const auto& device = context->eigen_device<Eigen::ThreadPoolDevice>();
    const float* s_all = s_in.flat<float>().data();
    const float* c_all = c_in.flat<float>().data();
    const float* d_out_all = d_outputs.flat<float>().data();
    float* dz_all = dz_out->flat<float>().data();
    float* dh = dh_out->flat<float>().data();
    float* dc = dc_out->flat<float>().data();
    std::copy_n(context->input(3).flat<float>().data(), batch * units, dh);
    std::copy_n(context->input(4).flat<float>().data(), batch * units, dc);
    const Parts parts(units, parts_ > 0 ? parts_ : device.numThreads());
    // The product of a part's dz columns with their rows of R^T is its share of the gradient reaching h, and
    // the parts' shares add up to it. The shares alternate between two sets: a step reads the set the step
    // after it wrote.
    const float* weights_t = recurrent_t.flat<float>().data();
    std::vector<RowMajor> dh_part[2];
    for (auto& shares : dh_part) {
      shares.resize(parts.count);
      for (RowMajor& share : shares) share.setZero(batch, units);
    }
    const int64_t width = width_;
    std::copy_n(dh, batch * units, dh_part[0][0].data());  // the incoming dh, as the first part's share

    for (int64_t t = steps - 1; t >= 0; --t) {
      const float* s = s_all + t * batch * gates;
      const float* c_prev = c_all + t * batch * units;
      const float* c = c_all + (t + 1) * batch * units;
      const float* d_out = d_out_all + t * batch * units;
      float* dz = dz_all + t * batch * width;
      const std::vector<RowMajor>& shares = dh_part[(steps - 1 - t) % 2];
      std::vector<RowMajor>& new_shares = dh_part[(steps - t) % 2];
      ForEachPart(device, parts.count, [&](int64_t p) {
        const int64_t first = parts.first(p), n = parts.units(p, units);
        Eigen::ArrayXf tanh_c(n), dh_total(n);
        for (int64_t row = 0; row < batch; ++row) {
          const int64_t at = row * units + first;
          dh_total = ConstRow(d_out + at, n);
          for (const RowMajor& share : shares) dh_total += ConstRow(share.data() + at, n);
          const float* sig = s + row * gates + first;
          ConstRow i(sig, n), f(sig + units, n), candidate(sig + 2 * units, n), o(sig + 3 * units, n);
          Row dc_row(dc + at, n);
          tanh_c = ConstRow(c + at, n).tanh();
          dc_row += dh_total * o * (1.0f - tanh_c * tanh_c);
          float* dz_row = dz + row * width + first;
          Row(dz_row, n) = dc_row * (2.0f * candidate - 1.0f) * (i - i * i);
          Row(dz_row + units, n) = dc_row * ConstRow(c_prev + at, n) * (f - f * f);
          // The candidate is g = 2 s - 1 with s = sigmoid(2 z), so its dz = dg * 4 s (1 - s).
          Row(dz_row + 2 * units, n) = (4.0f * dc_row) * i * (candidate - candidate * candidate);
          Row(dz_row + 3 * units, n) = dh_total * tanh_c * (o - o * o);
          dc_row *= f;
          if (p == 0) std::fill(dz + row * width + gates, dz + row * width + width, 0.0f);
        }
        // Its share: its four blocks of dz columns, each with its rows of R^T.
        for (int g = 0; g < kGates; ++g) {
          Columns dz_block(dz + g * units + first, batch, n, Eigen::OuterStride<>(width));
          ConstRowMajorMap rows(weights_t + (g * units + first) * units, n, units);
          if (g == 0) {
            new_shares[p].noalias() = dz_block * rows;
          } else {
            new_shares[p].noalias() += dz_block * rows;
          }
        }
      });
    }
    Eigen::Map<RowMajor> dh0(dh, batch, units);
    dh0.setZero();
    for (const RowMajor& share : dh_part[steps % 2]) dh0 += share;
  }

 private:
  int64_t width_;
  int parts_;
};
REGISTER_KERNEL_BUILDER(Name("TextgenLstmBackward").Device(tensorflow::DEVICE_CPU), TextgenLstmBackward);
