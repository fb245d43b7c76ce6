"""Preprocessing: uploaded clips and images become diffusion-pipe dataset directories.

``plan`` (pure: model facts, geometry, frame buckets, the ffmpeg command), ``probe``
(ffprobe and what its answer means), ``transcode`` (one ffmpeg run with progress),
``taskstore`` (task ids and durable state), ``tasks`` (the asynchronous manager),
``uploads`` (file names and streaming to disk), ``datasets`` (what a dataset directory holds
and what diffusion-pipe will keep of it).
"""
