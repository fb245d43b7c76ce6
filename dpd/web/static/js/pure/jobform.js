// The submit form's job document and where the server's field errors belong (pure).

/** The model paths a model type needs: one entry per config key, with installed choices. */
export function requiredPaths(model) {
  if (!model) return [];
  const byKey = new Map();
  for (const c of model.components ?? model.required_paths ?? []) {
    const key = c.config_key ?? c.key;
    if (!key) continue;
    const entry = byKey.get(key) ?? { key, path: c.path ?? "", installed: true, choices: [] };
    entry.installed = entry.installed && Boolean(c.installed);
    if (c.path && !entry.choices.includes(c.path)) entry.choices.push(c.path);
    for (const p of c.installed_paths ?? []) if (!entry.choices.includes(p)) entry.choices.push(p);
    byKey.set(key, entry);
  }
  return [...byKey.values()];
}

const num = (v) => (v === "" || v === null || v === undefined ? undefined : Number(v));

/** The POST /training/start body the form stands for; empty fields are left out. */
export function buildJob(form, paths) {
  const model = { dtype: "bfloat16" };
  for (const p of paths) if (form.paths[p.key]) model[p.key] = form.paths[p.key];
  const job = {
    model_type: form.model_type,
    queue: Boolean(form.queue),
    priority: num(form.priority) ?? 0,
    dataset: {
      resolutions: [num(form.resolution) ?? 512],
      directories: [{ path: form.dataset, num_repeats: 1 }],
    },
    config: {
      epochs: num(form.epochs),
      micro_batch_size_per_gpu: num(form.batch),
      model,
      adapter: { type: "lora", rank: num(form.rank), dtype: "bfloat16" },
      optimizer: { type: "adamw_optimi", lr: num(form.lr) },
      save: { save_every_n_epochs: num(form.save_every) },
    },
  };
  if (form.task_id) job.task_id = form.task_id;
  if (form.description) job.description = form.description;
  return job;
}

const FIELDS = [
  [/^task_id$/, "task_id"],
  [/^description$/, "description"],
  [/^model_type$/, "model_type"],
  [/^priority$/, "priority"],
  [/^dataset\.directories(\[\d+\])?(\.path)?$/, "dataset"],
  [/^dataset(\.resolutions.*)?$/, "resolution"],
  [/^config\.epochs$/, "epochs"],
  [/^config\.optimizer(\.lr)?$/, "lr"],
  [/^config\.adapter(\.rank)?$/, "rank"],
  [/^config\.micro_batch_size_per_gpu$/, "batch"],
  [/^config\.save(\..*)?$/, "save_every"],
];

/** The form field an error's `field` path belongs to, or null (shown above the buttons). */
export function fieldFor(field, paths) {
  const model = /^config\.model\.(.+)$/.exec(field ?? "");
  if (model && paths.some((p) => p.key === model[1])) return `path:${model[1]}`;
  for (const [pattern, id] of FIELDS) if (pattern.test(field ?? "")) return id;
  return null;
}
