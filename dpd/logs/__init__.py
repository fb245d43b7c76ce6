"""Reading a job's train.log for the logs API (api.md §5): the last lines, a keyword search,
and the ordered event feed behind the SSE and WebSocket streams.

train.log can grow to many GB; nothing here loads a whole file. The tail is read from the end
backwards, a search streams forward in large blocks, and a time range is found by bisecting
the file on its DeepSpeed logger timestamps. ``entries`` is the pure part (what one line looks
like in an answer, the filters, the time parameters); ``reader`` and ``search`` do blocking
file I/O and must run in a thread; ``feed`` is the async event feed.
"""
