"""Training data: the rendered corpus, Eq. 1 pairs, the Ray Data synthesis job and the training reader.

    photos.py     folders of photographs, split by photograph
    motion.py     camera and object motion; the motion kinds of ``motion="mixed"``
    corpus.py     the rendered 240 fps corpus (``CorpusConfig``, ``generate_corpus``)
    blur.py       Eq. 1 (``SynthesisConfig``, ``synthesize_clip``) and camera degradations
    dataset.py    a synthesized dataset: ``DataConfig``, its layout, splits and manifest
    shards.py     the Parquet training shards and evaluation clips as stored
    synth_job.py  the Ray Data job: one task per video (``process_video``, ``synthesize_dataset``)
    reader.py     the training reader (``read_training_dataset``) and the evaluation clips

Import from the module that says which job a name belongs to (``from deblur.data.synth_job import
synthesize_dataset``); importing the package imports none of them, so neither Ray nor torch.
"""
