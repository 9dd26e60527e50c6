"""The embedding cache: the frozen encoder's output for every 2D slice, computed once, so heads train from disk.

Modes (``AUTOSAM_EMBEDDING_CACHE``, or ``embedding_cache`` in the plans' ``sam_encoder`` entry; the
variable wins; on-the-fly is the default):

- ``off``: stock nnU-Net training, the encoder runs on every augmented patch.
- ``cache``: one embedding per slice. The slice is padded / centre-cropped to the configuration's
  patch size (data pad 0, label pad -1 -> 0, as nnU-Net's loader and RemoveLabelTansform do), so
  there is NO augmentation at all in training: spatial transforms cannot be applied to an
  embedding exactly, and intensity ones change it in ways a cache cannot reproduce.
- ``cache_views:K``: K augmented views per slice, made up front with nnU-Net's own training
  pipeline (the trainer's ``get_training_transforms`` on a crop at nnU-Net's initial patch size,
  the crop placed by nnU-Net's own ``nnUNetDataLoader.get_bbox`` with its foreground
  oversampling), then embedded. Training sees those K fixed views instead of a fresh draw each
  time: K x the build cost and storage of ``cache``, a finite sample of nnU-Net's augmentation.
  Each view is seeded from (case, slice, view), so any process rebuilds it bit for bit.

Layout, under the dataset's preprocessed folder::

    autosam_cache/<mode>_<encoder>_<input size>_<key>/
        manifest.json                 every field the key hashes, in clear
        cases/<case>/embeddings.npy   (slices*K, 256*P, G, G) float16, mmap_mode="r" (G: the encoder's
                                      embedding grid; P: encoder passes per slice, C for separate channels)
        cases/<case>/labels.npy       (slices*K, patch_y, patch_x) uint8
        cases/<case>/case.json        completion marker: counts, source signature, exact file sizes

The key is a SHA-256 over: cache format version, the encoder identity (type, input size, input
mapping, channel strategy and count, embedding width, checkpoint file SHA-256), the precision the
encoder ran in (fp32, or bf16 under autocast: nnunet_autosam.utilities.precision), the
preprocessing data identifier, the patch size, the mode and K (and the nnU-Net version for views,
whose transforms may change with it). Any change gives a new folder. All cases of the dataset can
be cached (so every fold shares one cache); training needs only the cases of its fold.

A case is the unit of work and of resumption: it is written to a temporary folder and renamed into
place with its case.json, so a case folder is complete or absent. A case is used only if its
case.json parses, names the same source (the preprocessed files' sizes and the case's shape) and
counts, and both arrays have exactly the recorded byte size and the expected shape and dtype;
anything else (truncated, missing, stale) is rebuilt, never read.

Sharding: ``nnunet-autosam cache DATASET -p PLANS --shard i/n`` builds the cases i, i+n, i+2n, ...
of the sorted case list (of the fold's training cases with ``--fold``). Shards share nothing but
the folder, so they can run at once on several GPUs or machines with a shared disk. Training
reuses every complete case and builds the missing or invalid ones itself (logged, with a progress
bar), so a partial cache only costs time.
"""
