/* The C baseline for bench/slot_updates.py: the same slot and entry updates through libbpf
 * directly, so the Python layer's overhead can be read off as a ratio.
 * Usage: slot_updates SLOTS ENTRIES REPEATS; prints one JSON object of per-item costs in µs. */
#include <bpf/bpf.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static int check(const char *what, int ret)
{
	if (ret < 0) {
		fprintf(stderr, "%s failed: %d\n", what, ret);
		exit(1);
	}
	return ret;
}

/* Best per-item time (µs) of REPEATS batch updates of n items. */
static double best_batch(int fd, const void *keys, const void *values, __u32 n, int repeats)
{
	LIBBPF_OPTS(bpf_map_batch_opts, opts);
	double best = 1e30;

	for (int r = 0; r < repeats; r++) {
		__u32 count = n;
		double t0 = now();

		check("bpf_map_update_batch", bpf_map_update_batch(fd, keys, values, &count, &opts));
		double t = (now() - t0) / n * 1e6;
		if (t < best)
			best = t;
	}
	return best;
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: %s SLOTS ENTRIES REPEATS\n", argv[0]);
		return 2;
	}
	__u32 slots = atoi(argv[1]), entries = atoi(argv[2]);
	int repeats = atoi(argv[3]);
	__u32 *keys = malloc(sizeof(__u32) * (slots > entries ? slots : entries));
	__u32 *fds = malloc(sizeof(__u32) * slots);
	__u64 *values = malloc(sizeof(__u64) * entries);

	int tmpl = check("create template", bpf_map_create(BPF_MAP_TYPE_HASH, NULL, 4, 8, 16, NULL));
	LIBBPF_OPTS(bpf_map_create_opts, outer_opts, .inner_map_fd = tmpl);
	int outer = check("create outer", bpf_map_create(BPF_MAP_TYPE_ARRAY_OF_MAPS, NULL, 4, 4, slots, &outer_opts));
	for (__u32 i = 0; i < slots; i++)
		fds[i] = check("create inner", bpf_map_create(BPF_MAP_TYPE_HASH, NULL, 4, 8, 16, NULL));
	for (__u32 i = 0; i < (slots > entries ? slots : entries); i++)
		keys[i] = i;
	for (__u32 i = 0; i < entries; i++)
		values[i] = (__u64)i * 3;

	double t0 = now();
	for (__u32 i = 0; i < slots; i++)
		check("slot update", bpf_map_update_elem(outer, &keys[i], &fds[i], 0));
	double slot_single = (now() - t0) / slots * 1e6;
	double slot_batch = best_batch(outer, keys, fds, slots, repeats);

	int inner = check("create inner", bpf_map_create(BPF_MAP_TYPE_HASH, NULL, 4, 8, entries, NULL));
	t0 = now();
	for (__u32 i = 0; i < entries; i++)
		check("entry update", bpf_map_update_elem(inner, &keys[i], &values[i], 0));
	double entry_single = (now() - t0) / entries * 1e6;
	double entry_batch = best_batch(inner, keys, values, entries, repeats);

	printf("{\"slot_single\": %.3f, \"slot_batch\": %.3f, \"entry_single\": %.4f, \"entry_batch\": %.4f}\n",
	       slot_single, slot_batch, entry_single, entry_batch);
	return 0;
}
