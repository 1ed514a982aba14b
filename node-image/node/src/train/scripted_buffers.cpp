// The buffers of a TorchScript module (batch norm's running statistics), which tch cannot
// list: pot-node checkpoints them beside the parameters, so a replay and an evaluation see what
// training left there. Each is handed to `f` as a new at::Tensor sharing the buffer's storage,
// which the Rust side owns from then on.
#include <torch/script.h>

extern "C" int pot_module_named_buffers(void *module, void *data,
                                        void (*f)(void *, const char *, void *)) {
  try {
    auto *m = static_cast<torch::jit::script::Module *>(module);
    for (const auto &b : m->named_buffers(/*recurse=*/true)) {
      f(data, b.name.c_str(), new torch::Tensor(b.value));
    }
    return 0;
  } catch (...) {
    return 1;
  }
}
