// The organizers' dashboard (skeleton: the full page follows).
const app = document.getElementById('app');
if (app) {
  const h = document.createElement('h1');
  h.textContent = 'tally';
  app.append(h);
}
