// View-parameter sampler: for every training sample, which two frames of its clip it uses and how
// each of the two views is augmented. Every value is a pure function of
// (seed, epoch, sample id, config), drawn from Philox-4x32-10; vito_fast/data/_sampler_numpy.py is
// the NumPy reference of the same algorithm (bit-for-bit on integers, see vito_fast/data/_philox.py
// for the counter layout both follow).
#pragma once

#include <array>
#include <cstdint>

namespace vito_fast {

// Philox-4x32-10 (Salmon et al., SC'11): 128-bit counter and 64-bit key -> 128 random bits.
std::array<uint32_t, 4> philox4x32_10(std::array<uint32_t, 4> counter, std::array<uint32_t, 2> key);

// How the temporal offset between the two frames is drawn (codes shared with
// vito_fast/data/sampler.py:DELTA_DISTRIBUTIONS).
enum class DeltaDistribution : int32_t {
    kUniform = 0,  // uniform in [delta_seconds_min, delta_seconds_max]
    kFixed = 1,    // always delta_seconds_max (== delta_seconds_min)
};

// Per-recipe probabilities; index 0 = view/recipe 1, index 1 = view/recipe 2.
struct RecipeProbabilities {
    double flip = 0.5;
    double jitter = 0.8;
    double grayscale = 0.2;
    double blur = 1.0;
    double solarize = 0.0;
};

// Everything the sampler needs, already derived by Python (ViewConfig.native()): ranges are
// [min, max] and drawn as min + (max - min) * u, so C++ and NumPy evaluate identical expressions.
struct SamplerConfig {
    DeltaDistribution delta_distribution = DeltaDistribution::kUniform;
    double delta_seconds_min = 0.0, delta_seconds_max = 2.5;
    double crop_scale_min = 0.08, crop_scale_max = 1.0;
    double crop_ratio_min = 0.75, crop_ratio_max = 4.0 / 3.0;
    double crop_log_ratio_min = 0.0, crop_log_ratio_max = 0.0;  // log of the ratios, from Python
    int32_t crop_attempts = 10;
    double brightness_min = 0.6, brightness_max = 1.4;
    double contrast_min = 0.6, contrast_max = 1.4;
    double saturation_min = 0.8, saturation_max = 1.2;
    double hue_min = -0.1, hue_max = 0.1;
    double blur_sigma_min = 0.1, blur_sigma_max = 2.0;
    double swap_probability = 0.5;
    RecipeProbabilities recipes[2];
};

// Read-only inputs for a batch of B samples (all C-contiguous).
struct SamplerInputs {
    const int64_t* sample_ids;  // (B,)
    const int64_t* num_frames;  // (B,)
    const double* fps;          // (B,)
    const int64_t* frame_hw;    // (B, 2): height, width
    int64_t batch_size;
};

// Output buffers for B samples (all C-contiguous, written completely); views indexed 0/1 =
// recipe 1/2. Shapes and units are documented on vito_fast.data.ViewParams.
struct SamplerOutputs {
    int64_t* frame_indices;   // (B, 2)
    int64_t* delta_frames;    // (B,)
    bool* swapped;            // (B,)
    int64_t* crop_boxes;      // (B, 2, 4) top, left, height, width
    bool* flips;              // (B, 2)
    bool* jitter_applied;     // (B, 2)
    float* brightness;        // (B, 2)
    float* contrast;          // (B, 2)
    float* saturation;        // (B, 2)
    float* hue;               // (B, 2)
    int8_t* jitter_order;     // (B, 2, 4)
    bool* grayscale;          // (B, 2)
    float* blur_sigma;        // (B, 2)
    bool* solarize;           // (B, 2)
};

// Fill `outputs` for every sample of `inputs`. Inputs must already be validated (Python does it).
// num_threads <= 0 picks a count from the batch size and the hardware; the result never depends
// on it.
void sample_view_params(const SamplerInputs& inputs, uint64_t seed, uint32_t epoch,
                        const SamplerConfig& config, const SamplerOutputs& outputs,
                        int num_threads);

}  // namespace vito_fast
