# CTest driver (label "long", `make test-all`): the paper's ResNet-9 trained with its recipe
# (Adam 1e-3, dropout 0.1, 10 epochs, batch 64) on the 10,000 images of the official
# data_batch_1.bin must reach a test accuracy of at least 0.65 on the first 1,000 images of the
# official test_batch.bin. About 45 minutes on 2 cores. The files are looked for in CIFAR_DIR
# (default: the team's shared/data/cifar10, where test_batch.bin's first 1,000 records are
# test_batch_first1000.bin); without them the test is skipped (CTest matches "skipped:").
if(NOT CIFAR_DIR)
  set(CIFAR_DIR ${SRC}/../shared/data/cifar10)
endif()
set(test_file ${CIFAR_DIR}/test_batch.bin)
if(NOT EXISTS ${test_file})
  set(test_file ${CIFAR_DIR}/test_batch_first1000.bin)
endif()
if(NOT EXISTS ${CIFAR_DIR}/data_batch_1.bin OR NOT EXISTS ${test_file})
  message("skipped: no official CIFAR-10 data_batch_1.bin and test batch in ${CIFAR_DIR} (set -DCIFAR_DIR=...)")
  return()
endif()
file(SIZE ${CIFAR_DIR}/data_batch_1.bin size)
if(NOT size EQUAL 30730000)
  message("skipped: ${CIFAR_DIR}/data_batch_1.bin has ${size} bytes, not the official 10,000 records")
  return()
endif()
set(tmp ${BIN}/resnet9-cifar-long)
file(MAKE_DIRECTORY ${tmp}/data)
file(CREATE_LINK ${CIFAR_DIR}/data_batch_1.bin ${tmp}/data/data_batch_1.bin SYMBOLIC)
file(CREATE_LINK ${test_file} ${tmp}/data/test_batch.bin SYMBOLIC)
# --resume: a killed run continues from its last epoch.
execute_process(COMMAND ${IIF} train --model resnet9 --data cifar10 --data-dir ${tmp}/data
                        --n-train 10000 --n-test 1000 --epochs 10 --batch 64 --optimizer adam --lr 0.001
                        --seed 0 --out ${tmp}/resnet9.safetensors --resume
                RESULT_VARIABLE r OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT r EQUAL 0)
  message(FATAL_ERROR "iif train: exit ${r}\n${out}${err}")
endif()
file(READ ${tmp}/resnet9.json j)
string(JSON acc GET "${j}" test_accuracy)
message("ResNet-9, 10,000 CIFAR-10 images, 10 epochs: test accuracy ${acc} on 1,000 held-out images")
if(acc LESS 0.65)
  message(FATAL_ERROR "test accuracy ${acc} < 0.65")
endif()
