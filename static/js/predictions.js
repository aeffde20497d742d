// Render a prediction answer: the image, each backbone's top-k with score bars, the ensemble.
import { h, pct } from "./dom.js";
import { attachExplain } from "./explain.js";

function scoreRow(label, score, { strong = false } = {}) {
  const width = Math.max(0, Math.min(100, 100 * (score || 0)));
  return h("li", { class: `score-row${strong ? " top" : ""}` },
    h("span", { class: "score-label", text: label, title: label }),
    h("span", { class: "score-bar", "aria-hidden": "true" },
      h("span", { class: "score-fill", style: { width: `${width}%` } })),
    h("span", { class: "score-value", text: pct(score) }));
}

/**
 * answer: {"backbones": {name: [{label, score}]}, "ensemble": {label, score, method, votes}}
 *   (+ ensemble.unknown / best_guess when the image is out of distribution, see docs/API.md)
 * titles: optional {name: "Pretty name"}; imageUrl: object URL of the classified image;
 * explain: optional {url, file}: add "Why this answer" (explain.js) for that image.
 */
export function renderPrediction(container, answer, { imageUrl, fileName, titles = {}, explain } = {}) {
  const backbones = (answer && answer.backbones) || {};
  const names = Object.keys(backbones);
  const ensemble = answer && answer.ensemble;
  const votes = (ensemble && ensemble.votes) || {};
  const nVotes = Object.values(votes).reduce((a, b) => a + b, 0) || names.length;

  const method = (ensemble && ensemble.method) || "majority vote";
  const isVote = method === "majority vote";
  const unsure = ensemble && ensemble.best_guess != null;
  const shown = unsure ? ensemble.best_guess : ensemble && ensemble.label;
  const voteText = `${votes[shown] ?? 0} of ${nVotes} ${nVotes === 1 ? "vote" : "votes"}`;
  // "None of these" (ensemble.unknown): the image is unlike every class's training images.
  const ood = Boolean(ensemble && ensemble.unknown);
  const why = [ensemble && ensemble.threshold != null ? `below the ${pct(ensemble.threshold)} needed to answer` : "",
    ood ? "but the image is unlike the training images of every class" : ""].filter(Boolean).join(", ");
  const ensembleBox = ensemble ? h("div", { class: `ensemble-answer${unsure ? " unsure" : ""}${ood ? " ood" : ""}` },
    h("p", { class: "eyebrow", text: `Ensemble (${method})` }),
    h("p", { class: "answer-label", text: ood ? "Unknown — unlike any class" : unsure ? "Not sure" : ensemble.label }),
    unsure ? h("p", { class: "answer-guess" }, "Best guess ", h("strong", { text: ensemble.best_guess }),
      ` at ${pct(ensemble.score)}, ${why}.`) : null,
    h("p", { class: "answer-meta" },
      isVote
        ? [voteText, ensemble.score != null ? ` · mean score ${pct(ensemble.score)}` : ""]
        : [ensemble.score != null ? `score ${pct(ensemble.score)}` : "", ` · ${voteText} of the backbones`]),
    Object.keys(votes).length > 1 ? h("ul", { class: "votes" },
      Object.entries(votes).sort((a, b) => b[1] - a[1]).map(([label, n]) =>
        h("li", null, h("span", { class: "vote-label", text: label }), `: ${n}`))) : null) : null;

  const perBackbone = h("div", { class: "backbone-answers" },
    names.map((name) => {
      const top = backbones[name] || [];
      return h("section", { class: "backbone-answer", "aria-label": titles[name] || name },
        h("h4", { text: titles[name] || name }),
        h("ol", { class: "scores" }, top.map((t, i) => scoreRow(t.label, t.score, { strong: i === 0 }))));
    }));

  container.replaceChildren(h("div", { class: "prediction" },
    imageUrl ? h("figure", { class: "prediction-image" },
      h("img", { src: imageUrl, alt: fileName ? `Classified image ${fileName}` : "Classified image" }),
      fileName ? h("figcaption", { text: fileName }) : null) : null,
    h("div", { class: "prediction-body" }, ensembleBox, perBackbone)));
  if (explain) attachExplain(container.querySelector(".prediction"), answer, { ...explain, titles });
}
