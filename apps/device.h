// --device for the iif programs: apps/device.cpp, built with whichever CUDA backend the program
// links (none, iif_cuda or iif_cuda_emulated).
#pragma once

#include <string>

#include "engine/tensor.h"

namespace iif {
namespace cli {

// cpu | cuda | cuda-emulated | auto (cuda when the CUDA backend is linked and a device is
// present, else cpu). Registers the CUDA backend when it returns a cuda device. Throws
// UsageError saying what this build can do otherwise.
Device cli_device(const std::string& name);
// The devices this program can use, for `iif info`.
std::string device_summary();

}  // namespace cli
}  // namespace iif
