// The only PYBIND11_MODULE of vito_fast: every C++ entry point is bound here.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <stdexcept>
#include <string>

#include "sampler.h"

namespace py = pybind11;

namespace {

template <typename T>
using CArray = py::array_t<T, py::array::c_style | py::array::forcecast>;

// The keys are written by vito_fast/data/sampler.py:ViewConfig.native(); a missing key is a
// stale build or a stale Python file, never user input.
double get_double(const py::dict& config, const char* key) {
    if (!config.contains(key)) throw std::invalid_argument(std::string("config: missing key ") + key);
    return config[key].cast<double>();
}

std::pair<double, double> get_pair(const py::dict& config, const char* key) {
    if (!config.contains(key)) throw std::invalid_argument(std::string("config: missing key ") + key);
    return config[key].cast<std::pair<double, double>>();
}

vito_fast::SamplerConfig config_from_dict(const py::dict& config) {
    vito_fast::SamplerConfig native;
    native.delta_distribution =
        static_cast<vito_fast::DeltaDistribution>(static_cast<int32_t>(get_double(config, "delta_distribution")));
    native.delta_seconds_min = get_double(config, "delta_seconds_min");
    native.delta_seconds_max = get_double(config, "delta_seconds_max");
    native.crop_scale_min = get_double(config, "crop_scale_min");
    native.crop_scale_max = get_double(config, "crop_scale_max");
    native.crop_ratio_min = get_double(config, "crop_ratio_min");
    native.crop_ratio_max = get_double(config, "crop_ratio_max");
    native.crop_log_ratio_min = get_double(config, "crop_log_ratio_min");
    native.crop_log_ratio_max = get_double(config, "crop_log_ratio_max");
    native.crop_attempts = static_cast<int32_t>(get_double(config, "crop_attempts"));
    native.brightness_min = get_double(config, "brightness_min");
    native.brightness_max = get_double(config, "brightness_max");
    native.contrast_min = get_double(config, "contrast_min");
    native.contrast_max = get_double(config, "contrast_max");
    native.saturation_min = get_double(config, "saturation_min");
    native.saturation_max = get_double(config, "saturation_max");
    native.hue_min = get_double(config, "hue_min");
    native.hue_max = get_double(config, "hue_max");
    native.blur_sigma_min = get_double(config, "blur_sigma_min");
    native.blur_sigma_max = get_double(config, "blur_sigma_max");
    native.swap_probability = get_double(config, "swap_probability");
    const auto flip = get_pair(config, "flip_probability");
    const auto jitter = get_pair(config, "jitter_probability");
    const auto grayscale = get_pair(config, "grayscale_probability");
    const auto blur = get_pair(config, "blur_probability");
    const auto solarize = get_pair(config, "solarize_probability");
    native.recipes[0] = {flip.first, jitter.first, grayscale.first, blur.first, solarize.first};
    native.recipes[1] = {flip.second, jitter.second, grayscale.second, blur.second, solarize.second};
    return native;
}

void check_length(const char* name, const py::array& array, int64_t batch_size) {
    if (array.ndim() < 1 || array.shape(0) != batch_size) {
        throw std::invalid_argument(std::string("sample_view_params: ") + name +
                                    " must have one entry per sample id (" +
                                    std::to_string(batch_size) + ")");
    }
}

// Python checks every input with messages that name the sample (vito_fast/data/sampler.py); this
// guard only keeps direct callers of _C away from undefined behaviour.
void check_values(const CArray<int64_t>& sample_ids, const CArray<int64_t>& num_frames,
                  const CArray<double>& fps, const CArray<int64_t>& frame_hw,
                  const vito_fast::SamplerConfig& config) {
    if (config.crop_attempts < 1 || config.crop_attempts > 0xFFFF) {
        throw std::invalid_argument("sample_view_params: config crop_attempts must lie in [1, 65535]");
    }
    const int64_t* ids = sample_ids.data();
    const int64_t* frames = num_frames.data();
    const double* rates = fps.data();
    const int64_t* sizes = frame_hw.data();
    for (int64_t i = 0; i < sample_ids.shape(0); ++i) {
        if (ids[i] < 0 || frames[i] < 1 || !(rates[i] > 0.0 && std::isfinite(rates[i])) ||
            sizes[2 * i] < 1 || sizes[2 * i + 1] < 1) {
            throw std::invalid_argument(
                "sample_view_params: invalid input at position " + std::to_string(i) +
                " (sample_ids >= 0, num_frames >= 1, finite fps > 0, frame_hw >= 1 required); "
                "call vito_fast.data.sample_view_params for a precise message");
        }
    }
}

py::dict sample_view_params(const CArray<int64_t>& sample_ids, const CArray<int64_t>& num_frames,
                            const CArray<double>& fps, const CArray<int64_t>& frame_hw,
                            uint64_t seed, uint32_t epoch, const py::dict& config, int num_threads) {
    if (sample_ids.ndim() != 1) throw std::invalid_argument("sample_view_params: sample_ids must be 1-D");
    const int64_t batch = sample_ids.shape(0);
    check_length("num_frames", num_frames, batch);
    check_length("fps", fps, batch);
    check_length("frame_hw", frame_hw, batch);
    if (frame_hw.ndim() != 2 || frame_hw.shape(1) != 2) {
        throw std::invalid_argument("sample_view_params: frame_hw must have shape (B, 2)");
    }
    const vito_fast::SamplerConfig native = config_from_dict(config);
    check_values(sample_ids, num_frames, fps, frame_hw, native);

    CArray<int64_t> frame_indices({batch, int64_t{2}}), delta_frames({batch}), crop_boxes({batch, int64_t{2}, int64_t{4}});
    CArray<bool> swapped({batch}), flips({batch, int64_t{2}}), jitter_applied({batch, int64_t{2}}),
        grayscale({batch, int64_t{2}}), solarize({batch, int64_t{2}});
    CArray<float> brightness({batch, int64_t{2}}), contrast({batch, int64_t{2}}), saturation({batch, int64_t{2}}),
        hue({batch, int64_t{2}}), blur_sigma({batch, int64_t{2}});
    CArray<int8_t> jitter_order({batch, int64_t{2}, int64_t{4}});

    const vito_fast::SamplerInputs inputs{sample_ids.data(), num_frames.data(), fps.data(), frame_hw.data(), batch};
    const vito_fast::SamplerOutputs outputs{
        frame_indices.mutable_data(), delta_frames.mutable_data(), swapped.mutable_data(),
        crop_boxes.mutable_data(),    flips.mutable_data(),        jitter_applied.mutable_data(),
        brightness.mutable_data(),    contrast.mutable_data(),     saturation.mutable_data(),
        hue.mutable_data(),           jitter_order.mutable_data(), grayscale.mutable_data(),
        blur_sigma.mutable_data(),    solarize.mutable_data()};
    {
        py::gil_scoped_release release;
        vito_fast::sample_view_params(inputs, seed, epoch, native, outputs, num_threads);
    }

    py::dict result;
    result["frame_indices"] = frame_indices;
    result["delta_frames"] = delta_frames;
    result["swapped"] = swapped;
    result["crop_boxes"] = crop_boxes;
    result["flips"] = flips;
    result["jitter_applied"] = jitter_applied;
    result["brightness"] = brightness;
    result["contrast"] = contrast;
    result["saturation"] = saturation;
    result["hue"] = hue;
    result["jitter_order"] = jitter_order;
    result["grayscale"] = grayscale;
    result["blur_sigma"] = blur_sigma;
    result["solarize"] = solarize;
    return result;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
    m.doc() = "vito_fast C++ extension";
    m.attr("ABI_VERSION") = 1;

    m.def("sample_view_params", &sample_view_params, py::arg("sample_ids"), py::arg("num_frames"),
          py::arg("fps"), py::arg("frame_hw"), py::arg("seed"), py::arg("epoch"), py::arg("config"),
          py::arg("num_threads") = 0,
          "View parameters for a batch (inputs validated by vito_fast.data.sample_view_params); "
          "returns a dict of NumPy arrays, the fields of vito_fast.data.ViewParams.");
    m.def("philox4x32_10", &vito_fast::philox4x32_10, py::arg("counter"), py::arg("key"),
          "Philox-4x32-10 block: 4 uint32 counter words and 2 key words -> 4 uint32 words.");
}
