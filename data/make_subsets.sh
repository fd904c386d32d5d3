#!/usr/bin/env bash
# Writes the small MNIST and CIFAR-10 subsets committed in data/ from the full standard files:
# the first N records of each file, in the same format and under the official file names, so
# the loaders read data/mnist and data/cifar10 exactly like a user's download.
# Usage: data/make_subsets.sh SOURCE_DIR [OUT_DIR]
#   SOURCE_DIR holds mnist/*-ubyte.gz and cifar10/{data_batch_1.bin, test_batch*.bin, classes.txt}
#   OUT_DIR defaults to the folder holding this script.
# Needs only bash, coreutils, gzip and xxd. gzip -n leaves out the name and time stamp, so the
# same gzip version gives the same bytes (data/README.md also lists md5s of the raw content).
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
  echo "usage: $0 SOURCE_DIR [OUT_DIR]" >&2
  exit 2
fi
src=$1
out=${2:-$(cd "$(dirname "$0")" && pwd)}

kMnistTrain=10000   # images kept from train-images-idx3-ubyte
kMnistTest=2000     # images kept from t10k-images-idx3-ubyte
kCifarTrain=1000    # records kept from data_batch_1.bin
kCifarTest=500      # records kept from test_batch.bin (or test_batch_first1000.bin)
kCifarRecord=3073   # 1 label byte + 3 x 32 x 32 pixel bytes

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

die() { echo "make_subsets.sh: $*" >&2; exit 1; }
need() { [[ -f $1 ]] || die "missing $1"; }
# A big-endian 32-bit integer as 4 raw bytes.
be32() { printf '%08x' "$1" | xxd -r -p; }

# mnist_subset NAME MAGIC N RECORD_BYTES: the first N records of NAME.gz with the count rewritten.
mnist_subset() {
  local name=$1 magic=$2 n=$3 record=$4 header
  need "$src/mnist/$name.gz"
  gzip -dc "$src/mnist/$name.gz" > "$tmp/$name"
  header=$(( magic == 2051 ? 16 : 8 ))  # images: magic, count, rows, cols; labels: magic, count
  [[ $(head -c 4 "$tmp/$name" | xxd -p) == $(printf '%08x' "$magic") ]] ||
    die "$name: magic is not $magic"
  local have=$(( 0x$(head -c 8 "$tmp/$name" | tail -c 4 | xxd -p) ))
  (( have >= n )) || die "$name holds $have records, fewer than $n"
  {
    head -c 4 "$tmp/$name"
    be32 "$n"
    head -c "$header" "$tmp/$name" | tail -c +9
    head -c $(( header + n * record )) "$tmp/$name" | tail -c +$(( header + 1 ))
  } | gzip -n -9 > "$out/mnist/$name.gz"
}

mkdir -p "$out/mnist" "$out/cifar10"
mnist_subset train-images-idx3-ubyte 2051 $kMnistTrain 784
mnist_subset train-labels-idx1-ubyte 2049 $kMnistTrain 1
mnist_subset t10k-images-idx3-ubyte 2051 $kMnistTest 784
mnist_subset t10k-labels-idx1-ubyte 2049 $kMnistTest 1

need "$src/cifar10/data_batch_1.bin"
head -c $(( kCifarTrain * kCifarRecord )) "$src/cifar10/data_batch_1.bin" > "$out/cifar10/data_batch_1.bin"
test_src="$src/cifar10/test_batch.bin"
[[ -f $test_src ]] || test_src="$src/cifar10/test_batch_first1000.bin"
need "$test_src"
head -c $(( kCifarTest * kCifarRecord )) "$test_src" > "$out/cifar10/test_batch.bin"
need "$src/cifar10/classes.txt"
install -m 644 "$src/cifar10/classes.txt" "$out/cifar10/classes.txt"

for f in "$out"/cifar10/*.bin; do
  (( $(stat -c %s "$f") % kCifarRecord == 0 )) || die "$f is not a whole number of records"
done
(cd "$out" && md5sum mnist/* cifar10/*)
