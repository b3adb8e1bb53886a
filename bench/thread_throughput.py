"""How much editing work two cores get through: one process on both cores, or two processes on one core each.

    .venv/bin/python -m bench.thread_throughput      # alone on the machine: about 2 minutes

The work is what the long benchmarks spend their time on, on SmolLM2: steps of a forward and backward pass
over a batch of prompts (value optimisation, expert and fine-tuning steps) and greedy decoding (generation exact
match). It times the same total work three ways: one 2-thread process; two 1-thread processes at once, each
doing half; one 1-thread process doing half alone (which says whether the two at once slow each other down).
Writes bench/results/thread_throughput.json.
"""
import argparse
import os
import subprocess
import sys
import time

from bench.common import write_result

ROUNDS = 4  # each: 10 forward and backward steps on 6 prompts, then 8 greedy tokens for 2 of them


def work(rounds: int) -> None:
    import torch

    from edit_plugins.models import load_model

    model, tok = load_model("smollm2-135m", "cpu")
    ids = tok(["The Eiffel Tower is located in the city of"] * 6, return_tensors="pt").input_ids
    for _ in range(rounds):
        for _ in range(10):
            model.zero_grad()
            model(ids, labels=ids).loss.backward()
        with torch.no_grad():
            model.generate(input_ids=ids[:2], attention_mask=torch.ones_like(ids[:2]), max_new_tokens=8,
                           do_sample=False, pad_token_id=tok.eos_token_id)


def timed(threads: int, rounds: int, copies: int) -> float:
    """Wall seconds for ``copies`` processes of ``rounds`` rounds each at ``threads`` threads, started together
    (each process's model loading excluded: it times itself)."""
    command = [sys.executable, "-m", "bench.thread_throughput", "--worker", str(rounds)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(copies)]
    seconds = [float(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    return max(seconds)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        import torch

        from bench.common import setup

        setup(torch.get_num_threads())
        work(1)  # warm-up, and the model loaded
        start = time.perf_counter()
        work(args.worker)
        print(time.perf_counter() - start)
        return
    one_process = timed(2, ROUNDS, 1)
    two_processes = timed(1, ROUNDS // 2, 2)
    half_alone = timed(1, ROUNDS // 2, 1)
    write_result("thread_throughput", {
        "rounds": ROUNDS,
        "one_process_two_threads_s": round(one_process, 1),
        "two_processes_one_thread_each_s": round(two_processes, 1),
        "one_thread_half_the_work_alone_s": round(half_alone, 1),
        "throughput_two_processes_vs_one": round(one_process / two_processes, 2),
        "slowdown_of_a_one_thread_process_beside_another": round(two_processes / half_alone, 2),
    })


if __name__ == "__main__":
    main()
