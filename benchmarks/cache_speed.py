"""Cold (encode) against warm (cache hit) embedding of a dataset side, same run.

    python benchmarks/cache_speed.py --encoder minilm --dataset scifact --side query

Uses a fresh temporary cache, so the cold number is a real encode; prints both and the ratio.
"""
import argparse
import tempfile
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="minilm")
    parser.add_argument("--dataset", default="scifact")
    parser.add_argument("--side", default="query", choices=["query", "doc"])
    args = parser.parse_args()

    from harness.cache import EmbeddingCache
    from harness.cli import make_dataset, make_encoder
    from harness.evaluate import embed_side

    encoder, dataset = make_encoder(args.encoder, device="cpu"), make_dataset(args.dataset)
    with tempfile.TemporaryDirectory() as tmp:
        cache = EmbeddingCache(tmp)
        t0 = time.perf_counter()
        cold = embed_side(encoder, dataset, "test", args.side, cache)
        t1 = time.perf_counter()
        warm = embed_side(encoder, dataset, "test", args.side, cache)
        t2 = time.perf_counter()
    assert not cold.cache_hit and warm.cache_hit
    print(f"{args.encoder} {args.dataset} {args.side}: {len(cold.ids)} texts")
    print(f"cold (encode) {t1 - t0:8.3f} s   warm (cache) {t2 - t1:8.3f} s   speed-up {(t1 - t0) / (t2 - t1):8.1f}x")


if __name__ == "__main__":
    main()
