// The page is public; the API needs the token, kept in this browser's localStorage.
const api = "/api/v1/notes/items";
const token = localStorage.getItem("aman.token") || prompt("API token (empty if none)") || "";
localStorage.setItem("aman.token", token);
const headers = token ? { Authorization: `Bearer ${token}` } : {};

async function refresh() {
  const resp = await fetch(api, { headers });
  const { items } = await resp.json();
  const list = document.getElementById("items");
  list.replaceChildren(...items.map((note) => {
    const li = document.createElement("li");
    li.textContent = note.text;
    return li;
  }));
}

document.getElementById("add").addEventListener("submit", async (e) => {
  e.preventDefault();
  const text = new FormData(e.target).get("text");
  await fetch(api, {
    method: "POST",
    headers: { ...headers, "Content-Type": "application/json" },
    body: JSON.stringify({ text }),
  });
  e.target.reset();
  refresh();
});

refresh();
