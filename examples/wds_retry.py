"""Reading genrep shards with stock `webdataset`, retrying shards whose download breaks.

A training job reads shards through a load balancer; when a replica dies mid-shard, the download
is cut. Stock `WebDataset(urls, handler=warn_and_continue)` would skip the rest of that shard.
`retrying_samples` is a drop-in pipeline stage that fetches the shard again (any replica serves
any shard: samples are pure functions of their URL and index) and skips the samples it already
yielded, so every sample arrives exactly once:

    pipeline = wds.DataPipeline(
        wds.SimpleShardList(urls),
        wds.split_by_node, wds.split_by_worker,   # DDP ranks and DataLoader workers
        retrying_samples,
        wds.decode("pil"),
        wds.to_tuple("anchor.png", "pos0.png", "cls"),
    )

A sample is yielded only once the next one has begun (or the download has ended cleanly), so a
cut between two members of one sample never lets a partial sample through.

Run as a script, it prints the key of every sample of the given shard URLs, one per line.
"""

import sys
import time

import webdataset as wds
from webdataset import tariterators


def _samples(url):
    stream = wds.gopen(url)
    try:
        files = (dict(f, __url__=url) for f in tariterators.tar_file_iterator(stream))
        yield from tariterators.group_by_keys(files)
    finally:
        # curl's exit status is checked here: a cut download raises.
        stream.close()


def retrying_samples(src, attempts=5, backoff=0.5):
    """Pipeline stage: shard dicts ({"url": ...}) in, samples out, each exactly once."""
    for shard in src:
        url = shard["url"]
        done = 0
        for attempt in range(attempts):
            try:
                pending, n = None, 0
                for sample in _samples(url):
                    if pending is not None and n > done:
                        done = n
                        yield pending
                    pending, n = sample, n + 1
                if pending is not None and n > done:
                    done = n
                    yield pending
                break
            except Exception as e:  # noqa: BLE001 (any transport error: retry the shard)
                if attempt + 1 == attempts:
                    raise
                print(f"retrying {url} after {done} samples: {e}", file=sys.stderr)
                time.sleep(backoff * 2**attempt)


if __name__ == "__main__":
    for sample in wds.DataPipeline(wds.SimpleShardList(sys.argv[1:]), retrying_samples):
        print(sample["__key__"], flush=True)
