"""Encoding throughput of the harness's encoder against sentence-transformers, same texts, same run.

    python benchmarks/encode_speed.py --encoder minilm --n 512 --repeats 3

Prints texts/second for each and the ratio (harness / sentence-transformers), alternating the two so machine
noise hits both alike; also the harness in bf16 autocast, and cosine parity of its vectors.
"""
import argparse
import statistics
import time

import torch


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="minilm")
    parser.add_argument("--dataset", default="scifact")
    parser.add_argument("--n", type=int, default=512, help="number of corpus documents to encode")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    from sentence_transformers import SentenceTransformer

    from harness.cli import make_dataset, make_encoder
    from harness.data import doc_text

    corpus = make_dataset(args.dataset).load("test").corpus
    texts = [doc_text(d) for d in list(corpus.values())[: args.n]]
    ours = make_encoder(args.encoder, device="cpu")
    ours_bf16 = make_encoder(args.encoder, device="cpu", dtype="bf16")
    st = SentenceTransformer(ours.model_ref, device="cpu")
    runners = {
        "harness fp32": lambda: ours.encode(texts, batch_size=args.batch_size),
        "sentence-transformers fp32": lambda: torch.from_numpy(st.encode(texts, batch_size=args.batch_size)),
        "harness bf16 autocast": lambda: ours_bf16.encode(texts, batch_size=args.batch_size),
    }
    times = {k: [] for k in runners}
    vectors = {}
    for _ in range(args.repeats):
        for name, fn in runners.items():
            t0 = time.perf_counter()
            vectors[name] = fn()
            times[name].append(time.perf_counter() - t0)
    ref = statistics.median(times["sentence-transformers fp32"])
    print(f"{args.encoder}, {len(texts)} {args.dataset} documents, max_length {ours.max_length}, {torch.get_num_threads()} threads")
    for name, ts in times.items():
        med = statistics.median(ts)
        cos = torch.nn.functional.cosine_similarity(vectors[name], vectors["sentence-transformers fp32"]).min().item()
        print(f"{name:28s} median {med:7.2f} s  {len(texts) / med:7.1f} texts/s  ratio vs ST {ref / med:5.2f}x  min cosine vs ST {cos:.6f}")


if __name__ == "__main__":
    main()
