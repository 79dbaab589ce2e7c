// The page shell: hash routes (#/chat, #/training/NAME, #/agents/ID, #/evals/...), the API-key form.
import { setApiKey, apiKey, clear, errorBox } from "./util.js";
import * as chat from "./chat.js";
import * as training from "./training.js";
import * as agents from "./agents.js";
import * as evals from "./evals.js";

const VIEWS = { chat, training, agents, evals };
let cleanup = null;

function route() {
  const [tab = "chat", ...rest] = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  const view = VIEWS[tab] ? tab : "chat";
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("active", link.dataset.tab === view);
  if (cleanup) cleanup();
  cleanup = null;
  const container = clear(document.getElementById("view"));
  try {
    cleanup = VIEWS[view].render(container, rest.filter(Boolean)) || null;
  } catch (err) {
    container.append(errorBox(err));
  }
}

document.getElementById("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  setApiKey(document.getElementById("api-key").value.trim());
  document.getElementById("key-form").hidden = true;
  route();
});
document.getElementById("api-key").value = apiKey();
window.addEventListener("hashchange", route);
route();
