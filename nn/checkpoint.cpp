// Model checkpoints on top of engine/safetensors (see nn/checkpoint.h).
#include "nn/checkpoint.h"

#include <stdexcept>

#include "engine/safetensors.h"

namespace iif {
namespace nn {

void save_checkpoint(const std::string& path, Module& model,
                     const std::map<std::string, std::string>& metadata,
                     const std::vector<std::pair<std::string, Tensor>>& extra) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (auto& p : model.named_parameters()) tensors.push_back({p.name, p.var->value()});
  for (auto& b : model.named_buffers()) tensors.push_back({b.name, *b.tensor});
  for (auto& e : extra) tensors.push_back(e);
  safetensors::save(path, tensors, metadata);
}

std::map<std::string, std::string> load_checkpoint(const std::string& path, Module& model) {
  const safetensors::File f = safetensors::load(path);
  // Every parameter and buffer the model declares, checked before any is written: a checkpoint
  // that does not fit leaves the model as it was.
  std::vector<std::pair<std::string, Tensor*>> wanted;
  for (auto& p : model.named_parameters()) wanted.push_back({p.name, &p.var->mutable_value()});
  for (auto& b : model.named_buffers()) wanted.push_back({b.name, b.tensor});
  for (auto& [name, dst] : wanted) {
    if (!f.has(name))
      throw std::runtime_error(path + ": tensor '" + name + "' of shape " + dst->shape().str() +
                               " that the model needs is missing (is this checkpoint for "
                               "another model? its metadata: model=" +
                               (f.metadata.count("model") ? f.metadata.at("model") : "?") + ")");
    const Tensor& t = f.get(name);
    if (t.shape() != dst->shape())
      throw std::runtime_error(path + ": tensor '" + name + "' has shape " + t.shape().str() +
                               " but the model expects " + dst->shape().str());
  }
  for (auto& [name, dst] : wanted) dst->copy_from(f.get(name));
  return f.metadata;
}

std::vector<std::pair<std::string, Tensor>> load_checkpoint_extra(const std::string& path,
                                                                   const std::string& prefix) {
  const safetensors::File f = safetensors::load(path);
  std::vector<std::pair<std::string, Tensor>> out;
  for (auto& [n, t] : f.tensors)
    if (n.compare(0, prefix.size(), prefix) == 0) out.push_back({n.substr(prefix.size()), t});
  return out;
}

std::string checkpoint_model_spec(const std::string& path) {
  const safetensors::File f = safetensors::load(path);
  auto it = f.metadata.find("model");
  if (it == f.metadata.end())
    throw std::runtime_error(path + ": metadata has no 'model' entry; pass the model spec explicitly");
  return it->second;
}

}  // namespace nn
}  // namespace iif
