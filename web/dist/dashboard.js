var e=document.getElementById("app");if(e){let t=document.createElement("h1");t.textContent="tally",e.append(t)}
