// Run a GGUF model through llama.cpp's public API (llama.h) and dump what it computes.
//
//   llama_harness MODEL.gguf OUT_DIR TOKEN[,TOKEN...] [f32|f16]
//
// Decodes the tokens as one batch, exactly as given (no BOS is added: this API never
// adds one), with logits requested at every position, on the CPU.  Writes, as raw
// little-endian float32 / int32 arrays:
//   OUT_DIR/logits.f32         [T, n_vocab]
//   OUT_DIR/l_out-<L>.f32      [T, n_embd]  output of decoder layer L (the eval callback)
//   OUT_DIR/ffn_moe_topk-<L>.i32 [T, n_expert_used]  the experts each token was routed to
// and prints one line "n_vocab=V n_embd=D n_layer=L n_tokens=T".  Exit 1 on any failure.
#include "llama.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

struct Capture {
    std::string out_dir;
    int captured = 0;
};

bool wanted(const char * name) {
    return std::strncmp(name, "l_out-", 6) == 0 || std::strncmp(name, "ffn_moe_topk-", 13) == 0;
}

bool write_file(const std::string & path, const void * data, size_t nbytes) {
    FILE * f = std::fopen(path.c_str(), "wb");
    if (!f) {
        std::fprintf(stderr, "cannot write %s\n", path.c_str());
        return false;
    }
    bool ok = std::fwrite(data, 1, nbytes, f) == nbytes;
    ok = (std::fclose(f) == 0) && ok;
    return ok;
}

// ggml_backend_sched_eval_callback: asked first whether we want a node, then shown it.
bool on_eval(struct ggml_tensor * t, bool ask, void * user_data) {
    auto * cap = static_cast<Capture *>(user_data);
    if (ask) {
        return wanted(t->name);
    }
    if (!wanted(t->name)) {
        return true;
    }
    if (t->type != GGML_TYPE_F32 && t->type != GGML_TYPE_I32) {
        std::fprintf(stderr, "%s: unexpected type %d\n", t->name, int(t->type));
        return false;
    }
    std::vector<char> raw(ggml_nbytes(t));
    ggml_backend_tensor_get(t, raw.data(), 0, raw.size());
    // The top-k experts are a strided view (rows of n_expert, first n_expert_used
    // taken): gather each row's ne[0] elements so the file is a dense [ne1, ne0] array.
    const size_t row = static_cast<size_t>(t->ne[0]) * ggml_type_size(t->type);
    const int64_t rows = ggml_nrows(t);
    std::vector<char> buf(row * rows);
    for (int64_t r = 0; r < rows; r++) {
        const int64_t i1 = r % t->ne[1], i2 = (r / t->ne[1]) % t->ne[2], i3 = r / (t->ne[1] * t->ne[2]);
        std::memcpy(&buf[r * row], &raw[i1 * t->nb[1] + i2 * t->nb[2] + i3 * t->nb[3]], row);
    }
    const char * ext = t->type == GGML_TYPE_F32 ? ".f32" : ".i32";
    if (!write_file(cap->out_dir + "/" + t->name + ext, buf.data(), buf.size())) {
        return false;
    }
    cap->captured++;
    return true;
}

void quiet_log(enum ggml_log_level level, const char * text, void *) {
    if (level == GGML_LOG_LEVEL_ERROR) {
        std::fputs(text, stderr);
    }
}

}  // namespace

int main(int argc, char ** argv) {
    if (argc < 4 || argc > 5) {
        std::fprintf(stderr, "usage: %s MODEL.gguf OUT_DIR TOKEN[,TOKEN...] [f32|f16]\n", argv[0]);
        return 1;
    }
    const char * model_path = argv[1];
    Capture cap;
    cap.out_dir = argv[2];
    std::vector<llama_token> tokens;
    for (char * p = argv[3]; *p;) {
        char * end = nullptr;
        long v = std::strtol(p, &end, 10);
        if (end == p) {
            std::fprintf(stderr, "bad token list %s\n", argv[3]);
            return 1;
        }
        tokens.push_back(static_cast<llama_token>(v));
        p = (*end == ',') ? end + 1 : end;
    }
    const std::string kv = argc == 5 ? argv[4] : "f32";
    if (kv != "f32" && kv != "f16") {
        std::fprintf(stderr, "KV cache type must be f32 or f16, not %s\n", kv.c_str());
        return 1;
    }
    const int n_tokens = static_cast<int>(tokens.size());

    llama_log_set(quiet_log, nullptr);
    llama_backend_init();
    llama_model_params mparams = llama_model_default_params();
    mparams.n_gpu_layers = 0;
    llama_model * model = llama_model_load_from_file(model_path, mparams);
    if (!model) {
        std::fprintf(stderr, "%s: llama.cpp could not load the model\n", model_path);
        return 1;
    }
    llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = n_tokens < 64 ? 64 : n_tokens;
    cparams.n_batch = cparams.n_ctx;
    cparams.n_ubatch = cparams.n_ctx;
    cparams.n_threads = 2;
    cparams.n_threads_batch = 2;
    cparams.type_k = kv == "f32" ? GGML_TYPE_F32 : GGML_TYPE_F16;
    cparams.type_v = cparams.type_k;
    cparams.cb_eval = on_eval;
    cparams.cb_eval_user_data = &cap;
    llama_context * ctx = llama_init_from_model(model, cparams);
    if (!ctx) {
        std::fprintf(stderr, "%s: could not create a context\n", model_path);
        return 1;
    }

    llama_batch batch = llama_batch_init(n_tokens, 0, 1);
    for (int i = 0; i < n_tokens; i++) {
        batch.token[i] = tokens[i];
        batch.pos[i] = i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = 1;  // logits at every position
    }
    batch.n_tokens = n_tokens;
    if (llama_decode(ctx, batch) != 0) {
        std::fprintf(stderr, "llama_decode failed\n");
        return 1;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);
    std::vector<float> logits(static_cast<size_t>(n_tokens) * n_vocab);
    for (int i = 0; i < n_tokens; i++) {
        const float * row = llama_get_logits_ith(ctx, i);
        if (!row) {
            std::fprintf(stderr, "no logits at position %d\n", i);
            return 1;
        }
        std::memcpy(&logits[static_cast<size_t>(i) * n_vocab], row, sizeof(float) * n_vocab);
    }
    if (!write_file(cap.out_dir + "/logits.f32", logits.data(), logits.size() * sizeof(float))) {
        return 1;
    }
    std::printf("n_vocab=%d n_embd=%d n_layer=%d n_tokens=%d captured=%d\n", n_vocab,
                llama_model_n_embd(model), llama_model_n_layer(model), n_tokens, cap.captured);
    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
