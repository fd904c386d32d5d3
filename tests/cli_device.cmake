# iif_emulated end to end on the CUDA backend run by the SIMT emulator (--device cuda-emulated):
# train + eval, and attribute with IIF and --profile (every stage row present), on a tiny MNIST
# case; the same attribute command on --device cpu must write a score file of the same shape
# (the values are compared in tests/test_cuda_attribution.cpp, which runs the same pipeline);
# the device errors are checked. Run by CTest as cli_device_emulated (labels cuda-emulated, cli).
set(OUT ${BIN}/cli_device)
file(REMOVE_RECURSE ${OUT})
file(MAKE_DIRECTORY ${OUT})

function(run expect_rc)
  execute_process(COMMAND ${IIF} ${ARGN} WORKING_DIRECTORY ${SRC} RESULT_VARIABLE rc
                  OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL ${expect_rc})
    message(FATAL_ERROR "iif ${ARGN}: exit ${rc}, expected ${expect_rc}\n${out}\n${err}")
  endif()
  set(OUT_TEXT "${out}\n${err}" PARENT_SCOPE)
endfunction()

run(0 train --data mnist --n-train 200 --n-test 50 --model mlp:784-16-10 --epochs 2 --batch 32
    --device cuda-emulated --out ${OUT}/m.safetensors --quiet)
run(0 eval --checkpoint ${OUT}/m.safetensors --n 50 --device cuda-emulated)
if(NOT OUT_TEXT MATCHES "accuracy")
  message(FATAL_ERROR "eval printed no accuracy:\n${OUT_TEXT}")
endif()

set(ATTR attribute --method iif --n-train 200 --n-test 2 --model mlp:784-16-10 --epochs 2 --batch 32
    --proj-dim 32 --K 2 --unlearn-epochs 1 --quiet)
run(0 ${ATTR} --device cuda-emulated --profile --out ${OUT}/s_cuda.npy)
foreach(stage "train epoch" featurize fisher solve fit score wall)
  if(NOT OUT_TEXT MATCHES "${stage}")
    message(FATAL_ERROR "--profile printed no '${stage}' row:\n${OUT_TEXT}")
  endif()
endforeach()
run(0 ${ATTR} --device cpu --out ${OUT}/s_cpu.npy)

# Same header (shape, dtype) means the same size.
file(READ ${OUT}/s_cuda.npy a HEX)
file(READ ${OUT}/s_cpu.npy b HEX)
string(LENGTH "${a}" la)
string(LENGTH "${b}" lb)
if(NOT la EQUAL lb)
  message(FATAL_ERROR "score files differ in size (${la} vs ${lb} hex digits)")
endif()
message(STATUS "cuda-emulated and cpu score files: ${la} hex digits each")

run(2 ${ATTR} --device cuda --out ${OUT}/x.npy)
if(NOT OUT_TEXT MATCHES "cuda-emulated")
  message(FATAL_ERROR "--device cuda in iif_emulated should point to cuda-emulated:\n${OUT_TEXT}")
endif()
run(2 ${ATTR} --device tpu --out ${OUT}/x.npy)
