// The web pages' lint: eslint's and typescript-eslint's recommended rules (type-aware) on
// src/, the plain recommended rules on the build scripts.
import js from '@eslint/js';
import globals from 'globals';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/', 'node_modules/'] },
  {
    files: ['*.mjs'],
    extends: [js.configs.recommended],
    languageOptions: { globals: globals.node },
  },
  {
    files: ['src/**/*.ts'],
    extends: [js.configs.recommended, ...tseslint.configs.recommendedTypeChecked],
    languageOptions: {
      globals: globals.browser,
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      // Inner HTML is never written from data: text goes through textContent.
      'no-restricted-properties': [
        'error',
        { property: 'innerHTML', message: 'build elements and set textContent instead' },
        { property: 'outerHTML', message: 'build elements and set textContent instead' },
      ],
      'no-restricted-syntax': ['error', { selector: "CallExpression[callee.property.name='insertAdjacentHTML']", message: 'no HTML from strings' }],
      eqeqeq: 'error',
    },
  },
);
