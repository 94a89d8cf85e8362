"""Streaming video I/O with PyAV (FFmpeg), both directions.

    decode.py      probe_video, read_frames, frame_to_rgb, VideoInfo, VideoError
    encode.py      EncoderOptions, the encoder, write_video (atomic output files)
    timestamps.py  repair of repeated, backward or missing timestamps
    pipeline.py    transform_video: decode, process and encode in threads

``transform_video`` decodes a file frame by frame, hands each RGB frame to a
processor (the online engine), and encodes what comes back, so memory never holds
more than the processor's window. The output keeps the input's frame count, frame
timestamps (so frame rate and duration, variable rates included), size, rotation
metadata and audio (packets copied unchanged where the output container accepts the
codec, re-encoded to AAC otherwise). It is written under a temporary name beside the
destination and renamed only when complete, so a failure never leaves a file where
a finished one is expected. Decoding and encoding run in threads of their own beside
the processor, linked by small bounded queues.

Timestamps that repeat, go back or are missing (joined files, broken muxers, raw H.264)
decode fine but no muxer accepts them: the writer repairs them (``timestamps.Timestamps``), keeping
every frame and every regular timestamp, and says so in one line (a warning of the
``deblur.video`` logger, and ``TransformResult.timestamp_repair``).
"""

from deblur.video.decode import RGB_CONVERSION, Source, VideoError, VideoInfo, frame_to_rgb, probe_video, read_frames
from deblur.video.encode import EncoderOptions, write_video
from deblur.video.pipeline import FrameProcessor, TransformResult, transform_video

__all__ = [
    "RGB_CONVERSION",
    "EncoderOptions",
    "FrameProcessor",
    "Source",
    "TransformResult",
    "VideoError",
    "VideoInfo",
    "frame_to_rgb",
    "probe_video",
    "read_frames",
    "transform_video",
    "write_video",
]
