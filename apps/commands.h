// Subcommands of the iif program implemented outside apps/iif.cpp.
#pragma once

#include "apps/cli_args.h"

namespace iif {
namespace cli {
int cmd_attribute(const Args& a);
int cmd_lds(const Args& a);
int cmd_mislabel(const Args& a);
}  // namespace cli
}  // namespace iif
