// The device layer's caching allocator is the engine's (engine/caching_pool.h).
#pragma once

#include "engine/caching_pool.h"
#include "engine/cuda/device.h"

namespace iif {
namespace cuda {
namespace dev {
using iif::CachingPool;
using iif::make_pool;
}  // namespace dev
}  // namespace cuda
}  // namespace iif
