"""The ``empersona/`` inspect model API: fast local generation for a base model and its LoRA adapters.

Model strings (the part after ``empersona/`` is a local folder):

- ``empersona/<base model dir>``: the base model;
- ``empersona/<adapter dir>``: a PEFT LoRA adapter; its base comes from ``adapter_config.json``
  (``base_model_name_or_path``);
- ``empersona/<base model dir>`` with the model arg ``adapter=<adapter dir>``: the same, spelled
  from the base.

Every model on the same base folder (and device, dtype, options) shares one loaded copy of the
base weights, so the base and six fine-tunes cost one model in memory, and requests for all of
them that are pending at the same moment run as one mixed batch.

Model args (``-M key=value`` on inspect's command line, ``model_args`` in Python):
``adapter`` (folder), ``device`` ("cuda", "cpu", ...; default cuda when available),
``dtype`` ("auto" = bfloat16 on CUDA, float32 on CPU; or "float32", "bfloat16", "float16"),
``max_batch_size`` (256), ``max_connections`` (concurrent requests inspect sends; default twice
``max_batch_size``: a round runs the oldest pending requests, up to one batch's worth, and the
next round's are already waiting when it ends), ``prefix_reuse`` (true), ``min_prefix`` (16 tokens), ``compile``
(default: on for CUDA), ``sync_every`` (8; decode steps between EOS checks when compiled),
``freeze_gc`` (true: after loading, ``gc.freeze()`` keeps full garbage collections off the
long-lived objects; see ``api.served``), ``kv_cache_gib`` (most GiB the compiled path's static
KV caches may hold together; default on CUDA half the memory free after loading, see
``engine``), ``min_batch_bucket`` (fewest rows a compiled batch is padded to; default 32 on CUDA,
so the small batches at the end of each task share one compiled graph), ``compile_mode`` (the
decode step's ``torch.compile`` mode; default ``reduce-overhead``, CUDA graphs, on CUDA; read only
where the step is compiled).

``temperature=0`` is greedy decoding (inspect's ``hf`` provider needs ``do_sample=False``
instead); ``logprobs``/``top_logprobs`` return the model's logprob of each generated token and
its most likely alternatives, as text pieces.

The provider is registered with inspect through the ``inspect_ai`` entry point of this package
(``pyproject.toml``, pointing at ``empersona.provider.api``), so ``inspect eval ... --model
empersona/<dir>`` works without imports. The engine (``provider.engine``) needs only torch,
transformers and peft, not inspect, so it runs where inspect is not installed.
"""
