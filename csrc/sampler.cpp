// View-parameter sampler (see sampler.h). The NumPy reference (vito_fast/data/_sampler_numpy.py)
// evaluates the same floating-point expressions in the same order, so both must stay in step:
// change one, change the other, and tests/test_sampler.py checks they still agree.

// Bit-for-bit agreement with NumPy needs every a*b+c rounded twice, never fused into an FMA
// (GCC contracts by default on targets whose baseline has FMA, e.g. aarch64).
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "sampler.h"

#include <algorithm>
#include <cmath>
#include <thread>
#include <vector>

namespace vito_fast {

namespace {

constexpr uint32_t kPhiloxMultiplier0 = 0xD2511F53u;
constexpr uint32_t kPhiloxMultiplier1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxWeyl0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxWeyl1 = 0xBB67AE85u;

// Streams of the counter layout (vito_fast/data/_philox.py documents it); view streams add the
// view index (0 or 1).
constexpr uint32_t kStreamTiming = 0;        // block 0: (delta, first frame); block 1: (swap, -)
constexpr uint32_t kStreamCropShape = 1;     // block a: (scale, log ratio) of crop attempt a
constexpr uint32_t kStreamCropPosition = 3;  // block 0: (top, left)
constexpr uint32_t kStreamAppearance = 5;    // blocks 0..6, see sample_appearance

constexpr double kTwoToMinus53 = 1.0 / 9007199254740992.0;
constexpr int kPortableExpHalvings = 8;
constexpr int kPortableExpTerms = 8;

// Philox-4x32-10 on `count` counters at once, in place, structure of arrays: the rounds of
// independent blocks interleave (and vectorise), which is several times faster than one block
// after another.
template <int kCount>
struct PhiloxBatch {
    uint32_t word0[kCount], word1[kCount], word2[kCount], word3[kCount];

    void encrypt(std::array<uint32_t, 2> key) {
        for (int round = 0; round < 10; ++round) {
            if (round > 0) {
                key[0] += kPhiloxWeyl0;
                key[1] += kPhiloxWeyl1;
            }
            for (int i = 0; i < kCount; ++i) {
                const uint64_t product0 = static_cast<uint64_t>(kPhiloxMultiplier0) * word0[i];
                const uint64_t product1 = static_cast<uint64_t>(kPhiloxMultiplier1) * word2[i];
                const uint32_t next0 = static_cast<uint32_t>(product1 >> 32) ^ word1[i] ^ key[0];
                const uint32_t next2 = static_cast<uint32_t>(product0 >> 32) ^ word3[i] ^ key[1];
                word0[i] = next0;
                word1[i] = static_cast<uint32_t>(product1);
                word2[i] = next2;
                word3[i] = static_cast<uint32_t>(product0);
            }
        }
    }
};

inline double to_unit(uint32_t low, uint32_t high) {
    const uint64_t word = (static_cast<uint64_t>(high) << 32) | low;
    // < 2^53, so the signed conversion is exact (and one instruction; unsigned needs several).
    return static_cast<double>(static_cast<int64_t>(word >> 11)) * kTwoToMinus53;
}

using UniformPair = std::array<double, 2>;

// The draws of one sample: the counter is (stream << 16 | block, epoch, id low, id high). The
// blocks every sample needs are encrypted together up front; further crop attempts on demand.
class SampleRandom {
  public:
    SampleRandom(uint64_t seed, uint32_t epoch, uint64_t sample_id)
        : key_{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)},
          epoch_(epoch),
          id_low_(static_cast<uint32_t>(sample_id)),
          id_high_(static_cast<uint32_t>(sample_id >> 32)) {
        int slot = 0;
        for (uint32_t block = 0; block < kTimingBlocks; ++block) set_counter(slot++, kStreamTiming, block);
        for (uint32_t view = 0; view < 2; ++view) {
            set_counter(slot++, kStreamCropShape + view, 0);
            set_counter(slot++, kStreamCropPosition + view, 0);
            for (uint32_t block = 0; block < kAppearanceBlocks; ++block) {
                set_counter(slot++, kStreamAppearance + view, block);
            }
        }
        fixed_.encrypt(key_);
    }

    UniformPair timing(int block) const { return fixed_pair(block); }
    UniformPair crop_position(int view) const { return fixed_pair(view_base(view) + 1); }
    UniformPair appearance(int view, int block) const { return fixed_pair(view_base(view) + 2 + block); }
    UniformPair crop_shape(int view, int attempt) const {
        if (attempt == 0) return fixed_pair(view_base(view));
        const std::array<uint32_t, 4> bits = philox4x32_10(
            {((kStreamCropShape + view) << 16) | static_cast<uint32_t>(attempt), epoch_, id_low_, id_high_},
            key_);
        return {to_unit(bits[0], bits[1]), to_unit(bits[2], bits[3])};
    }

  private:
    static constexpr uint32_t kTimingBlocks = 2;
    static constexpr uint32_t kAppearanceBlocks = 7;
    static constexpr int kViewBlocks = 2 + kAppearanceBlocks;
    static constexpr int kFixedBlocks = kTimingBlocks + 2 * kViewBlocks;

    static int view_base(int view) { return kTimingBlocks + view * kViewBlocks; }

    void set_counter(int slot, uint32_t stream, uint32_t block) {
        fixed_.word0[slot] = (stream << 16) | block;
        fixed_.word1[slot] = epoch_;
        fixed_.word2[slot] = id_low_;
        fixed_.word3[slot] = id_high_;
    }

    UniformPair fixed_pair(int slot) const {
        return {to_unit(fixed_.word0[slot], fixed_.word1[slot]),
                to_unit(fixed_.word2[slot], fixed_.word3[slot])};
    }

    std::array<uint32_t, 2> key_;
    uint32_t epoch_, id_low_, id_high_;
    PhiloxBatch<kFixedBlocks> fixed_;
};

// An integer uniform in [0, last] from u in [0, 1): min(floor(u * (last + 1)), last). The product
// is >= 0, so truncation is the floor (and avoids a libm call without SSE4.1).
inline int64_t uniform_index(double u, int64_t last) {
    const int64_t scaled = static_cast<int64_t>(u * static_cast<double>(last + 1));
    return std::min(scaled, last);
}

// Round half to even of x >= 0, as np.rint and Python's round: adding and subtracting 2^52 leaves
// no fractional bits, so the FPU rounds in the default mode. Far cheaper than std::nearbyint,
// which saves and restores the floating-point environment on every call.
inline double round_half_even(double x) {
    constexpr double kTwoTo52 = 4503599627370496.0;
    return x >= kTwoTo52 ? x : (x + kTwoTo52) - kTwoTo52;
}

inline double lerp(double low, double high, double u) { return low + (high - low) * u; }

// exp(x) from + and * only, so that C++ and NumPy (whose SIMD exp may differ from libm's in the
// last bit) produce identical doubles: Horner's scheme for the Taylor series of exp(x / 2^8)
// with coefficients 1 / k! (one correctly rounded division each, the same on both sides), then
// squared 8 times. Relative error ~1e-13 for |x| <= 10, far below anything a crop can see.
constexpr double factorial(int k) { return k <= 1 ? 1.0 : k * factorial(k - 1); }

struct PortableExpCoefficients {
    double inverse_factorial[kPortableExpTerms + 1];
    constexpr PortableExpCoefficients() : inverse_factorial{} {
        for (int k = 0; k <= kPortableExpTerms; ++k) inverse_factorial[k] = 1.0 / factorial(k);
    }
};
constexpr PortableExpCoefficients kExpCoefficients{};

inline double portable_exp(double x) {
    const double reduced = x * (1.0 / static_cast<double>(1 << kPortableExpHalvings));
    double result = kExpCoefficients.inverse_factorial[kPortableExpTerms];
    for (int k = kPortableExpTerms - 1; k >= 0; --k) {
        result = result * reduced + kExpCoefficients.inverse_factorial[k];
    }
    for (int halving = 0; halving < kPortableExpHalvings; ++halving) result = result * result;
    return result;
}

// torchvision RandomResizedCrop.get_params, drawing from this sample's counters.
void sample_crop(const SampleRandom& random, int view, int64_t height, int64_t width,
                 const SamplerConfig& config, int64_t* box) {
    const double area = static_cast<double>(height) * static_cast<double>(width);
    for (int attempt = 0; attempt < config.crop_attempts; ++attempt) {
        const auto u = random.crop_shape(view, attempt);
        const double target_area = area * lerp(config.crop_scale_min, config.crop_scale_max, u[0]);
        const double aspect_ratio =
            portable_exp(lerp(config.crop_log_ratio_min, config.crop_log_ratio_max, u[1]));
        const double crop_width = round_half_even(std::sqrt(target_area * aspect_ratio));
        const double crop_height = round_half_even(std::sqrt(target_area / aspect_ratio));
        if (crop_width > 0.0 && crop_width <= static_cast<double>(width) && crop_height > 0.0 &&
            crop_height <= static_cast<double>(height)) {
            const int64_t h = static_cast<int64_t>(crop_height);
            const int64_t w = static_cast<int64_t>(crop_width);
            const auto position = random.crop_position(view);
            box[0] = uniform_index(position[0], height - h);
            box[1] = uniform_index(position[1], width - w);
            box[2] = h;
            box[3] = w;
            return;
        }
    }
    // Centre-crop fallback with the aspect ratio clamped to the allowed range (never empty).
    const double in_ratio = static_cast<double>(width) / static_cast<double>(height);
    int64_t h = height, w = width;
    if (in_ratio < config.crop_ratio_min) {
        h = std::max<int64_t>(1, static_cast<int64_t>(
                                     round_half_even(static_cast<double>(w) / config.crop_ratio_min)));
    } else if (in_ratio > config.crop_ratio_max) {
        w = std::max<int64_t>(1, static_cast<int64_t>(
                                     round_half_even(static_cast<double>(h) * config.crop_ratio_max)));
    }
    box[0] = (height - h) / 2;
    box[1] = (width - w) / 2;
    box[2] = h;
    box[3] = w;
}

// Flip, colour jitter (torchvision ColorJitter: factors, hue shift, random order), grayscale,
// blur and solarize of one view, written at flat index `slot` = sample * 2 + view.
void sample_appearance(const SampleRandom& random, int view, const SamplerConfig& config,
                       const SamplerOutputs& out, int64_t slot) {
    const RecipeProbabilities& recipe = config.recipes[view];
    const auto flip_jitter = random.appearance(view, 0);
    const auto gray_blur = random.appearance(view, 1);
    const auto solarize_sigma = random.appearance(view, 2);

    out.flips[slot] = flip_jitter[0] < recipe.flip;
    out.grayscale[slot] = gray_blur[0] < recipe.grayscale;
    out.solarize[slot] = solarize_sigma[0] < recipe.solarize;
    const bool blur = gray_blur[1] < recipe.blur;
    out.blur_sigma[slot] = blur ? static_cast<float>(lerp(config.blur_sigma_min,
                                                          config.blur_sigma_max, solarize_sigma[1]))
                                : 0.0f;

    const bool jitter = flip_jitter[1] < recipe.jitter;
    out.jitter_applied[slot] = jitter;
    int8_t* order = out.jitter_order + slot * 4;
    for (int op = 0; op < 4; ++op) order[op] = static_cast<int8_t>(op);
    if (!jitter) {
        out.brightness[slot] = 1.0f;
        out.contrast[slot] = 1.0f;
        out.saturation[slot] = 1.0f;
        out.hue[slot] = 0.0f;
        return;
    }
    const auto brightness_contrast = random.appearance(view, 3);
    const auto saturation_hue = random.appearance(view, 4);
    out.brightness[slot] = static_cast<float>(
        lerp(config.brightness_min, config.brightness_max, brightness_contrast[0]));
    out.contrast[slot] =
        static_cast<float>(lerp(config.contrast_min, config.contrast_max, brightness_contrast[1]));
    out.saturation[slot] =
        static_cast<float>(lerp(config.saturation_min, config.saturation_max, saturation_hue[0]));
    out.hue[slot] = static_cast<float>(lerp(config.hue_min, config.hue_max, saturation_hue[1]));

    // Fisher-Yates over the four operations: steps i = 3, 2, 1 swap order[i] with order[j<=i].
    const auto steps_3_2 = random.appearance(view, 5);
    const auto steps_1 = random.appearance(view, 6);
    const double step_uniforms[3] = {steps_3_2[0], steps_3_2[1], steps_1[0]};
    for (int step = 0; step < 3; ++step) {
        const int64_t i = 3 - step;
        std::swap(order[i], order[uniform_index(step_uniforms[step], i)]);
    }
}

void sample_one(const SamplerInputs& in, int64_t index, uint64_t seed, uint32_t epoch,
                const SamplerConfig& config, const SamplerOutputs& out) {
    const SampleRandom random(seed, epoch, static_cast<uint64_t>(in.sample_ids[index]));
    const int64_t num_frames = in.num_frames[index];

    // Temporal offset in seconds -> frames at this clip's rate, clamped into the clip.
    const auto delta_first = random.timing(0);
    const double seconds =
        config.delta_distribution == DeltaDistribution::kFixed
            ? config.delta_seconds_max
            : lerp(config.delta_seconds_min, config.delta_seconds_max, delta_first[0]);
    const double delta_float = std::min(round_half_even(seconds * in.fps[index]),
                                        static_cast<double>(num_frames - 1));
    const int64_t delta = static_cast<int64_t>(delta_float);
    const int64_t earlier = uniform_index(delta_first[1], num_frames - 1 - delta);
    const int64_t later = earlier + delta;
    const bool swapped = random.timing(1)[0] < config.swap_probability;
    out.delta_frames[index] = delta;
    out.swapped[index] = swapped;
    out.frame_indices[index * 2 + 0] = swapped ? later : earlier;
    out.frame_indices[index * 2 + 1] = swapped ? earlier : later;

    const int64_t height = in.frame_hw[index * 2 + 0];
    const int64_t width = in.frame_hw[index * 2 + 1];
    for (int view = 0; view < 2; ++view) {
        sample_crop(random, view, height, width, config, out.crop_boxes + (index * 2 + view) * 4);
        sample_appearance(random, view, config, out, index * 2 + view);
    }
}

// Below this many samples per thread, a thread is not worth it: one thread does 4,096 samples in
// ~1.3 ms, and on a busy machine (data loaders, decoders) a second one often waits for a core.
constexpr int64_t kMinSamplesPerThread = 4096;

}  // namespace

std::array<uint32_t, 4> philox4x32_10(std::array<uint32_t, 4> counter,
                                      std::array<uint32_t, 2> key) {
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            key[0] += kPhiloxWeyl0;
            key[1] += kPhiloxWeyl1;
        }
        const uint64_t product0 = static_cast<uint64_t>(kPhiloxMultiplier0) * counter[0];
        const uint64_t product1 = static_cast<uint64_t>(kPhiloxMultiplier1) * counter[2];
        counter = {static_cast<uint32_t>(product1 >> 32) ^ counter[1] ^ key[0],
                   static_cast<uint32_t>(product1),
                   static_cast<uint32_t>(product0 >> 32) ^ counter[3] ^ key[1],
                   static_cast<uint32_t>(product0)};
    }
    return counter;
}

void sample_view_params(const SamplerInputs& inputs, uint64_t seed, uint32_t epoch,
                        const SamplerConfig& config, const SamplerOutputs& outputs,
                        int num_threads) {
    const int64_t batch_size = inputs.batch_size;
    if (num_threads <= 0) {
        const int64_t hardware = std::max(1u, std::thread::hardware_concurrency());
        num_threads = static_cast<int>(
            std::clamp<int64_t>(batch_size / kMinSamplesPerThread, 1, std::min<int64_t>(hardware, 16)));
    }
    num_threads = static_cast<int>(std::clamp<int64_t>(num_threads, 1, std::max<int64_t>(batch_size, 1)));
    auto run_range = [&](int64_t begin, int64_t end) {
        for (int64_t index = begin; index < end; ++index) {
            sample_one(inputs, index, seed, epoch, config, outputs);
        }
    };
    if (num_threads == 1) {
        run_range(0, batch_size);
        return;
    }
    std::vector<std::thread> workers;
    workers.reserve(num_threads - 1);
    const int64_t chunk = (batch_size + num_threads - 1) / num_threads;
    for (int worker = 1; worker < num_threads; ++worker) {
        const int64_t begin = std::min(batch_size, worker * chunk);
        const int64_t end = std::min(batch_size, begin + chunk);
        workers.emplace_back(run_range, begin, end);
    }
    run_range(0, std::min(batch_size, chunk));  // the calling thread takes the first chunk
    for (std::thread& worker : workers) worker.join();
}

}  // namespace vito_fast
